// libFuzzer target: the node config loader on YAML input (yaml-cpp, our scalar
// typing rules, validation).
#include <cstddef>
#include <cstdint>
#include <string>

#include "omnirelay/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto root = omnirelay::config::YamlToJson(text);
  if (!root.ok()) return 0;
  auto config = omnirelay::config::Parse(*root);
  if (config.ok()) {
    (void)omnirelay::config::ToJson(*config).dump(-1, ' ', false,
                                                  nlohmann::json::error_handler_t::replace);
  }
  return 0;
}
