#include "omnirelay/core/xdg.h"

#include <cstdlib>

namespace omnirelay::core {

std::string XdgPath(XdgKind kind, std::string_view relative) {
  const char* variable = "XDG_DATA_HOME";
  const char* fallback = ".local/share";
  const char* bare = "omnirelay-data";
  if (kind == XdgKind::kState) {
    variable = "XDG_STATE_HOME";
    fallback = ".local/state";
    bare = "omnirelay-state";
  } else if (kind == XdgKind::kCache) {
    variable = "XDG_CACHE_HOME";
    fallback = ".cache";
    bare = "omnirelay-cache";
  }
  std::string base;
  if (const char* value = std::getenv(variable); value != nullptr && value[0] == '/') {
    base = std::string(value) + "/omnirelay";
  } else if (const char* home = std::getenv("HOME"); home != nullptr && home[0] == '/') {
    base = std::string(home) + "/" + fallback + "/omnirelay";
  } else {
    base = bare;
  }
  if (relative.empty()) return base;
  return base + "/" + std::string(relative);
}

}  // namespace omnirelay::core
