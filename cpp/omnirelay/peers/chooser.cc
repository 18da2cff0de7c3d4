#include "omnirelay/peers/chooser.h"

#include <random>

#include "omnirelay/peers/choosers/choosers.h"
#include "omnirelay/peers/sticky_chooser.h"

namespace omnirelay::peers {

void PeerChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                             std::vector<int>* order) {
  (void)meta;
  const int n = static_cast<int>(snapshot.raw.size());
  order->clear();
  int start = first >= 0 && first < n ? first : 0;
  for (int i = 0; i < n; ++i) order->push_back((start + i) % n);
}

namespace {
template <typename T>
ChooserFactory Factory() {
  return [](const ChooserOptions& options) -> std::unique_ptr<PeerChooser> {
    ChooserOptions seeded = options;
    if (seeded.seed == 0) seeded.seed = (std::uint64_t{std::random_device{}()} << 32) | 1;
    return std::make_unique<T>(seeded);
  };
}
}  // namespace

const std::map<std::string, ChooserFactory, std::less<>>& BuiltinChoosers() {
  // An explicit table, built on first use: no static registration side effects.
  static const auto* table = new std::map<std::string, ChooserFactory, std::less<>>{
      {"round-robin", Factory<RoundRobinChooser>()},
      {"two-random", Factory<TwoRandomChooser>()},
      {"fewest-pending", Factory<FewestPendingChooser>()},
      {"preferred", Factory<PreferredChooser>()},
      {"hash", Factory<HashChooser>()},
      {"least-latency", Factory<LeastLatencyChooser>()},
      {"sticky", Factory<StickyChooser>()},
  };
  return *table;
}

std::vector<std::string> ChooserNames() {
  std::vector<std::string> names;
  for (const auto& [name, factory] : BuiltinChoosers()) names.push_back(name);
  return names;
}

absl::StatusOr<std::unique_ptr<PeerChooser>> CreateChooser(std::string_view name,
                                                           const ChooserOptions& options) {
  const auto& table = BuiltinChoosers();
  auto it = table.find(name);
  if (it == table.end()) {
    std::string known;
    for (const auto& [known_name, factory] : table) {
      known += known.empty() ? "" : ", ";
      known += known_name;
    }
    return core::MakeStatus(
        core::StatusCode::kInvalidArgument,
        "unknown peer chooser '" + std::string(name) + "' (known: " + known + ")",
        "unknown-peer-chooser");
  }
  return it->second(options);
}

}  // namespace omnirelay::peers
