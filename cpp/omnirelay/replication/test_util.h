#pragma once
// Helpers shared by the replication tests.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "omnirelay/replication/event.h"

namespace omnirelay::replication::testing {

// A fresh directory under $TMPDIR, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "omnirelay-repl-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline ReplicationEvent MakeEvent(std::string queue, std::uint64_t seq,
                                  std::string op = "enqueue") {
  ReplicationEvent e;
  e.queue = std::move(queue);
  e.sequence = seq;
  e.op = std::move(op);
  e.item_id = seq;
  e.occurred_at_us = 1'700'000'000'000'000 + static_cast<std::int64_t>(seq);
  if (e.op == "enqueue") {
    resourcelease::ItemPayload p;
    p.resource_type = "table";
    p.resource_id = "t-" + std::to_string(seq);
    p.request_id = "req-" + std::to_string(seq);
    p.body = std::string("\x00\x01 body \xff", 10);
    p.attributes = {{"k", "v"}};
    p.priority = static_cast<int>(seq % 3);
    e.request_id = p.request_id;
    e.payload = p;
  }
  return e;
}

}  // namespace omnirelay::replication::testing
