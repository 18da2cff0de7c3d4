#pragma once
// KvBackend on a real etcd cluster through its v3 gRPC API (KV, Txn, Watch,
// Lease), for deployments across hosts. etcd does the agreement (Raft); this
// class only translates. Lease TTLs are whole seconds on etcd's side (a TTL is
// rounded up; etcd may also raise it to its minimum, ~1.5 x election timeout).
//
// Each Watch() opens one etcd watch stream read by its own thread; if the
// stream breaks (etcd restarted, network), the thread re-creates it and
// delivers an empty "resync" batch so consumers re-read their state.
#include <grpcpp/channel.h>

#include <memory>
#include <string>
#include <vector>

#include "omnirelay/coord/kv_backend.h"

namespace omnirelay::coord {

struct EtcdOptions {
  // "host:port" or "http://host:port"; the first one that answers is used.
  std::vector<std::string> endpoints;
  // Open() fails when no endpoint answers within this time.
  core::Duration dial_timeout = std::chrono::seconds(3);
  // Deadline of every unary call.
  core::Duration request_timeout = std::chrono::seconds(5);
};

class EtcdBackend final : public KvBackend {
 public:
  // Connects and probes with a Range; fails fast with UNAVAILABLE naming the
  // endpoints when none answers within dial_timeout.
  static core::StatusOr<std::shared_ptr<EtcdBackend>> Open(EtcdOptions options);
  ~EtcdBackend() override;

  std::string_view kind() const override { return "etcd"; }
  const std::string& endpoint() const { return endpoint_; }
  core::StatusOr<LeaseGrant> GrantLease(core::Duration ttl) override;
  core::StatusOr<core::Duration> KeepAlive(LeaseId lease) override;
  core::Status RevokeLease(LeaseId lease) override;
  core::StatusOr<RangeResult> Range(std::string_view key, RangeOptions options) override;
  core::StatusOr<TxnResult> Txn(const std::vector<Compare>& compares,
                                const std::vector<TxnOp>& ops) override;
  core::StatusOr<WatchHandle> Watch(std::string_view prefix, WatchCallback callback) override;

 private:
  struct Stubs;
  struct WatchStream;
  EtcdBackend(EtcdOptions options, std::string endpoint, std::shared_ptr<grpc::Channel> channel);

  EtcdOptions options_;
  std::string endpoint_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stubs> stubs_;
};

}  // namespace omnirelay::coord
