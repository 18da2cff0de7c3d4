// libFuzzer target: the node config loader on JSON input (parse, --set style
// overrides, validation, and ToJson of whatever validated).
#include <cstddef>
#include <cstdint>
#include <string>

#include "omnirelay/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false,
                                    /*ignore_comments=*/true);
  if (root.is_discarded()) return 0;
  // The first line doubles as a --set override, exercising the key-path writer.
  const auto newline = text.find('\n');
  (void)omnirelay::config::ApplySets(root, {text.substr(0, newline)});
  auto config = omnirelay::config::Parse(root);
  if (config.ok()) {
    (void)omnirelay::config::ToJson(*config).dump(-1, ' ', false,
                                                  nlohmann::json::error_handler_t::replace);
  }
  return 0;
}
