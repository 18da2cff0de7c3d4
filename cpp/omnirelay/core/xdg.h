#pragma once
// Where OmniRelay keeps files by default: the XDG base directories, never a
// hard-coded dot-folder in the working directory or home.
//   data   $XDG_DATA_HOME/omnirelay   (default ~/.local/share/omnirelay): user store, JWT key
//   state  $XDG_STATE_HOME/omnirelay  (default ~/.local/state/omnirelay): stack control files
//   cache  $XDG_CACHE_HOME/omnirelay  (default ~/.cache/omnirelay): generated stubs
// A relative XDG_* value is ignored (the specification says so). Without HOME
// the folder is "omnirelay-<kind>" under the working directory.
// Thread-safety: reads the environment; call from any thread.
#include <string>
#include <string_view>

namespace omnirelay::core {

enum class XdgKind { kData, kState, kCache };

// "<base>/omnirelay/<relative>" ("<base>/omnirelay" when relative is empty).
std::string XdgPath(XdgKind kind, std::string_view relative = {});

}  // namespace omnirelay::core
