#include "omnirelay/samples/registry_client.h"

#include <nlohmann/json.hpp>

#include "omnirelay/core/address.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/http/http_server.h"

namespace omnirelay::samples {
namespace {

using nlohmann::json;

std::string UrlEncode(std::string_view text) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kDigits[c >> 4]);
      out.push_back(kDigits[c & 0xf]);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::pair<std::string, uint16_t>> SplitHostPort(std::string_view address) {
  auto parsed = core::ParseHostPort(address);  // the one address parser
  if (!parsed.ok()) return parsed.status();
  return std::make_pair(parsed->host, parsed->port);
}

absl::StatusOr<RegistryClient> RegistryClient::Create(std::string_view address,
                                                      std::chrono::milliseconds timeout,
                                                      const std::optional<tls::TlsOptions>& tls) {
  auto parsed = core::ParseHostPort(address);
  if (!parsed.ok()) return parsed.status();
  if (parsed->port == 0) return absl::InvalidArgumentError("registry port must not be 0");
  if (!parsed->scheme.empty() && parsed->scheme != "http" && parsed->scheme != "https") {
    return absl::InvalidArgumentError("registry '" + std::string(address) +
                                      "': scheme must be http:// or https://");
  }
  std::shared_ptr<tls::ContextSource> source;
  if (parsed->tls()) {
    // https:// is TLS or an error, never plaintext. Without options the
    // server is verified against the system store.
    auto created = tls::ContextSource::Create(tls.value_or(tls::TlsOptions{}), tls::Role::kClient);
    if (!created.ok()) {
      return absl::InvalidArgumentError("registry '" + std::string(address) +
                                        "': " + std::string(created.status().message()));
    }
    source = std::move(*created);
  }
  return RegistryClient(parsed->host, parsed->port, timeout, std::move(source));
}

absl::StatusOr<http::HttpClientResult> RegistryClient::Call(const std::string& method,
                                                            const std::string& target,
                                                            const std::string& body,
                                                            const core::Headers& headers) const {
  auto result = http::HttpCall(host_, port_, method, target, body, headers, timeout_, tls_.get());
  if (!result.ok()) {
    return absl::UnavailableError(std::string(tls_ ? "registry https://" : "registry ") + host_ +
                                  ":" + std::to_string(port_) + ": " +
                                  std::string(result.status().message()));
  }
  return result;
}

absl::StatusOr<std::string> RegistryClient::Post(const std::string& path,
                                                 const std::string& body) const {
  core::Headers headers;
  headers.Set("Content-Type", "application/json");
  if (!token_.empty()) headers.Set("Authorization", "Bearer " + token_);
  auto result = Call("POST", path, body, headers);
  if (!result.ok()) return result.status();
  if (result->status != 200) {
    return absl::InternalError("registry " + path + " answered " + std::to_string(result->status) +
                               ": " + result->body);
  }
  return std::move(result->body);
}

absl::Status RegistryClient::Register(const Instance& instance) const {
  const json body = {{"id", instance.id}, {"address", instance.address}, {"role", instance.role}};
  return Post("/register", body.dump()).status();
}

absl::Status RegistryClient::Unregister(std::string_view id) const {
  const json body = {{"id", std::string(id)}};
  return Post("/unregister", body.dump()).status();
}

absl::StatusOr<std::vector<Instance>> RegistryClient::List(std::string_view role) const {
  std::string target = "/instances";
  if (!role.empty()) target += "?role=" + UrlEncode(role);
  auto result = Call("GET", target, {}, {});
  if (!result.ok()) return result.status();
  if (result->status != 200) {
    return absl::InternalError("registry /instances answered " + std::to_string(result->status));
  }
  const json list = json::parse(result->body, nullptr, /*allow_exceptions=*/false);
  if (list.is_discarded() || !list.is_array()) {
    return absl::InternalError("registry /instances: reply is not a JSON list");
  }
  std::vector<Instance> instances;
  for (const auto& item : list) {
    auto field = [&item](const char* name) -> std::string {
      if (!item.is_object()) return {};
      auto it = item.find(name);
      return it != item.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    Instance instance{field("id"), field("address"), field("role")};
    if (instance.id.empty() || instance.address.empty()) {
      return absl::InternalError("registry /instances: entry without id or address");
    }
    instances.push_back(std::move(instance));
  }
  return instances;
}

RegistrationLoop::RegistrationLoop(RegistryClient client, Instance instance,
                                   std::chrono::milliseconds interval)
    : client_(std::move(client)), instance_(std::move(instance)), interval_(interval) {}

RegistrationLoop::~RegistrationLoop() { Stop(/*unregister=*/false); }

absl::Status RegistrationLoop::Start() {
  absl::Status status = client_.Register(instance_);
  if (status.ok()) {
    core::LogInfo("registry.registered",
                  {{"id", instance_.id}, {"address", instance_.address}, {"role", instance_.role}});
  } else {
    core::LogWarn("registry.register_failed",
                  {{"id", instance_.id}, {"error", std::string(status.message())}});
  }
  thread_ = std::thread([this] { Run(); });
  return status;
}

void RegistrationLoop::Run() {
  bool healthy = true;
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, interval_, [this] { return stopping_; })) {
    lock.unlock();
    const absl::Status status = client_.Heartbeat(instance_);
    // Log transitions only: a registry that is down for a minute must not
    // produce sixty identical warnings.
    if (!status.ok() && healthy) {
      core::LogWarn("registry.heartbeat_failed",
                    {{"id", instance_.id}, {"error", std::string(status.message())}});
    } else if (status.ok() && !healthy) {
      core::LogInfo("registry.heartbeat_recovered", {{"id", instance_.id}});
    }
    healthy = status.ok();
    lock.lock();
  }
}

void RegistrationLoop::Stop(bool unregister) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (unregister) {
    const absl::Status status = client_.Unregister(instance_.id);
    if (status.ok()) {
      core::LogInfo("registry.unregistered", {{"id", instance_.id}});
    } else {
      core::LogWarn("registry.unregister_failed",
                    {{"id", instance_.id}, {"error", std::string(status.message())}});
    }
  }
}

}  // namespace omnirelay::samples
