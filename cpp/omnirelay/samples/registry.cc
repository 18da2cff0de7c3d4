#include "omnirelay/samples/registry.h"

#include <openssl/crypto.h>

#include <nlohmann/json.hpp>

#include "omnirelay/core/logging.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::samples {
namespace {

using nlohmann::json;

http::HttpResponse JsonError(int status, const std::string& message) {
  return http::HttpResponse::Json(status, json{{"error", message}}.dump());
}

// Reads a required non-empty string field without letting nlohmann throw.
std::optional<std::string> StringField(const json& body, const char* name) {
  if (!body.is_object()) return std::nullopt;
  auto it = body.find(name);
  if (it == body.end() || !it->is_string()) return std::nullopt;
  std::string value = it->get<std::string>();
  if (value.empty()) return std::nullopt;
  return value;
}

}  // namespace

InstanceRegistry::InstanceRegistry(RegistryOptions options, std::shared_ptr<core::Clock> clock)
    : options_(options), clock_(clock ? std::move(clock) : core::SystemClock::Shared()) {}

absl::Status InstanceRegistry::Register(const Instance& instance) {
  if (instance.id.empty() || instance.address.empty() || instance.role.empty()) {
    return absl::InvalidArgumentError("id, address and role are required");
  }
  std::lock_guard<std::mutex> lock(mu_);
  entries_.insert_or_assign(instance.id, std::pair{instance, clock_->Now() + options_.ttl});
  return absl::OkStatus();
}

bool InstanceRegistry::Unregister(std::string_view id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  entries_.erase(it);
  return true;
}

std::vector<Instance> InstanceRegistry::List(std::string_view role) {
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked(clock_->Now());
  std::vector<Instance> result;
  for (const auto& [id, entry] : entries_) {
    if (role.empty() || entry.first.role == role) result.push_back(entry.first);
  }
  return result;
}

void InstanceRegistry::PruneLocked(core::TimePoint now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.second <= now) {
      core::LogInfo("registry.expired", {{"id", it->first}});
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
}

std::string InstancesToJson(const std::vector<Instance>& instances) {
  json list = json::array();
  for (const auto& instance : instances) {
    list.push_back({{"id", instance.id}, {"address", instance.address}, {"role", instance.role}});
  }
  return list.dump();
}

RegistryServer::RegistryServer(http::HttpServerOptions http_options, RegistryOptions options,
                               std::shared_ptr<core::Clock> clock)
    : registry_(options, std::move(clock)),
      verifies_client_certificates_(http_options.tls != nullptr &&
                                    http_options.tls->options().client_auth !=
                                        tls::ClientAuth::kNone),
      server_(std::move(http_options)) {
  server_.Route("POST", "/register", [this](const http::HttpRequest& request) {
    if (auto denied = Unauthorized(request)) return std::move(*denied);
    const json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) return JsonError(400, "body is not JSON");
    auto id = StringField(body, "id");
    auto address = StringField(body, "address");
    auto role = StringField(body, "role");
    if (!id || !address || !role) {
      return JsonError(400, "id, address and role are required strings");
    }
    if (auto status = registry_.Register({*id, *address, *role}); !status.ok()) {
      return JsonError(400, std::string(status.message()));
    }
    const auto ttl_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(registry_.options().ttl).count();
    return http::HttpResponse::Json(200, json{{"ok", true}, {"ttl_ms", ttl_ms}}.dump());
  });
  server_.Route("POST", "/unregister", [this](const http::HttpRequest& request) {
    if (auto denied = Unauthorized(request)) return std::move(*denied);
    const json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) return JsonError(400, "body is not JSON");
    auto id = StringField(body, "id");
    if (!id) return JsonError(400, "id is required");
    const bool removed = registry_.Unregister(*id);
    if (removed) core::LogInfo("registry.unregistered", {{"id", *id}});
    return http::HttpResponse::Json(200, json{{"removed", removed}}.dump());
  });
  server_.Route("GET", "/instances", [this](const http::HttpRequest& request) {
    return http::HttpResponse::Json(
        200, InstancesToJson(registry_.List(request.QueryParam("role").value_or(""))));
  });
  server_.Route("GET", "/healthz", [](const http::HttpRequest&) {
    return http::HttpResponse::Json(200, R"({"status":"ok"})");
  });
}

std::optional<http::HttpResponse> RegistryServer::Unauthorized(
    const http::HttpRequest& request) const {
  if (registry_.options().allow_unauthenticated) return std::nullopt;
  // Only a certificate that verified against the listener's CA gets here
  // non-empty (tls::PeerOf), so its presence is the authentication.
  if (!request.peer.empty()) return std::nullopt;
  const std::string& token = registry_.options().token;
  const std::string_view auth = request.headers.Get("authorization").value_or("");
  if (!token.empty() && auth.size() == token.size() + 7 && auth.starts_with("Bearer ") &&
      CRYPTO_memcmp(auth.data() + 7, token.data(), token.size()) == 0) {
    return std::nullopt;
  }
  core::LogWarn("registry.unauthorized", {{"remote", request.remote_address}});
  auto response = JsonError(
      401, "registrations need Authorization: Bearer <registry token> or a client certificate");
  response.headers.Set("www-authenticate", "Bearer realm=\"omnirelay-registry\"");
  return response;
}

absl::Status RegistryServer::Start() {
  if (registry_.options().token.empty() && !verifies_client_certificates_ &&
      !registry_.options().allow_unauthenticated) {
    return absl::FailedPreconditionError(
        "registrations would be unauthenticated: give a registry token (--token-file) or "
        "require client certificates (--tls-client-cert require), or pass "
        "--insecure-allow-unauthenticated for a local demo");
  }
  if (registry_.options().allow_unauthenticated) {
    core::LogWarn("registry.unauthenticated",
                  {{"hint", "anyone who reaches the port can register instances"}});
  }
  return server_.Start();
}

void RegistryServer::Stop() { server_.Stop(); }

}  // namespace omnirelay::samples
