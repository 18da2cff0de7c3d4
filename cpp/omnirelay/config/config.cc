#include "omnirelay/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "omnirelay/core/address.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/peers/chooser.h"
#include "omnirelay/peers/geo_chooser.h"

extern char** environ;

namespace omnirelay::config {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A value as JSON text for error messages; invalid UTF-8 is replaced rather
// than thrown about (fuzz target config_yaml).
std::string Show(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Collects every problem with its key path.
class Errors {
 public:
  void Add(const std::string& path, const std::string& message) {
    lines_.push_back(path + ": " + message);
  }
  bool empty() const { return lines_.empty(); }
  absl::Status ToStatus() const {
    std::string all;
    for (const auto& l : lines_) all += (all.empty() ? "" : "\n") + l;
    return absl::InvalidArgumentError(all);
  }

 private:
  std::vector<std::string> lines_;
};

// A view of one JSON object that tracks which keys were consumed, so unknown
// keys (typos) are reported. Keys match case-insensitively (environment
// overrides arrive upper-cased).
class Obj {
 public:
  Obj(const nlohmann::json& json, std::string path, Errors& errors)
      : json_(json), path_(std::move(path)), errors_(errors) {
    if (!json_.is_object()) errors_.Add(path_, "must be an object");
  }
  ~Obj() {
    if (!json_.is_object()) return;
    for (const auto& [key, value] : json_.items()) {
      if (std::find(used_.begin(), used_.end(), Lower(key)) == used_.end()) {
        errors_.Add(path_ + "." + key, "unknown key");
      }
    }
  }
  const nlohmann::json* Get(std::string_view key) {
    used_.push_back(Lower(key));
    if (!json_.is_object()) return nullptr;
    for (const auto& [k, v] : json_.items()) {
      if (Lower(k) == Lower(key)) return &v;
    }
    return nullptr;
  }
  std::string Path(std::string_view key) const { return path_ + "." + std::string(key); }

  void String(std::string_view key, std::string& out) {
    if (const auto* v = Get(key)) {
      if (v->is_string()) {
        out = v->get<std::string>();
      } else if (v->is_number() || v->is_boolean()) {
        out = Show(*v);
      } else {
        errors_.Add(Path(key), "must be a string");
      }
    }
  }
  void Int(std::string_view key, int& out, int min = 0) {
    if (const auto* v = Get(key)) {
      std::optional<long long> n;
      if (v->is_number_integer()) n = v->get<long long>();
      if (v->is_string()) {
        try {
          size_t used = 0;
          n = std::stoll(v->get<std::string>(), &used);
          if (used != v->get<std::string>().size()) n.reset();
        } catch (...) {
        }
      }
      if (!n || *n < min || *n > 1'000'000'000) {
        errors_.Add(Path(key),
                    "must be an integer >= " + std::to_string(min) + ", got " + Show(*v));
      } else {
        out = static_cast<int>(*n);
      }
    }
  }
  void Double(std::string_view key, double& out, double min = 0) {
    if (const auto* v = Get(key)) {
      std::optional<double> n;
      if (v->is_number()) n = v->get<double>();
      if (v->is_string()) {
        // The whole string must be the number: "1.5x" and "nan" are errors.
        double parsed = 0;
        const std::string& text = v->get_ref<const std::string&>();
        if (!text.empty() && absl::SimpleAtod(text, &parsed)) n = parsed;
      }
      if (!n || !std::isfinite(*n) || *n < min) {
        errors_.Add(Path(key), "must be a number >= " + std::to_string(min) + ", got " + Show(*v));
      } else {
        out = *n;
      }
    }
  }
  void Bool(std::string_view key, bool& out) {
    if (const auto* v = Get(key)) {
      if (v->is_boolean()) {
        out = v->get<bool>();
      } else if (v->is_string() && (Lower(v->get<std::string>()) == "true" ||
                                    Lower(v->get<std::string>()) == "false")) {
        out = Lower(v->get<std::string>()) == "true";
      } else {
        errors_.Add(Path(key), "must be true or false, got " + Show(*v));
      }
    }
  }
  void Dur(std::string_view key, core::Duration& out) {
    if (const auto* v = Get(key)) {
      std::optional<core::Duration> d;
      // Numbers are milliseconds, at most ~100 years (beyond, nanosecond
      // arithmetic overflows: fuzz target config_json, drain.timeout 1e308).
      if (v->is_number() && v->get<double>() >= 0 && v->get<double>() <= 3.2e12) {
        d = std::chrono::duration_cast<core::Duration>(
            std::chrono::duration<double, std::milli>(v->get<double>()));
      } else if (v->is_string()) {
        d = core::ParseDuration(v->get<std::string>());
      }
      if (!d) {
        errors_.Add(Path(key), "must be a duration like \"250ms\", \"1.5s\", got " + Show(*v));
      } else {
        out = *d;
      }
    }
  }
  void Strings(std::string_view key, std::vector<std::string>& out) {
    if (const auto* v = Get(key)) {
      if (v->is_string()) {
        // "a,b,c" (handy for --set and environment overrides)
        out.clear();
        std::stringstream ss(v->get<std::string>());
        std::string item;
        while (std::getline(ss, item, ',')) {
          if (!item.empty()) out.push_back(item);
        }
        return;
      }
      if (!v->is_array()) {
        errors_.Add(Path(key), "must be a list of strings");
        return;
      }
      out.clear();
      for (size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string()) {
          errors_.Add(Path(key) + "[" + std::to_string(i) + "]", "must be a string");
        } else {
          out.push_back((*v)[i].get<std::string>());
        }
      }
    }
  }
  // {key: scalar} -> string map; "k=v,k2=v2" accepted too (--set, environment).
  void StringMap(std::string_view key, std::map<std::string, std::string>& out) {
    const auto* v = Get(key);
    if (v == nullptr || v->is_null()) return;
    if (v->is_string()) {
      std::stringstream ss(v->get<std::string>());
      std::string item;
      while (std::getline(ss, item, ',')) {
        if (item.empty()) continue;
        const auto eq = item.find('=');
        if (eq == std::string::npos || eq == 0) {
          errors_.Add(Path(key), "'" + item + "' is not key=value");
        } else {
          out[item.substr(0, eq)] = item.substr(eq + 1);
        }
      }
      return;
    }
    if (!v->is_object()) {
      errors_.Add(Path(key), "must be an object of key: value");
      return;
    }
    for (const auto& [k, value] : v->items()) {
      if (value.is_string()) {
        out[k] = value.get<std::string>();
      } else if (value.is_number() || value.is_boolean()) {
        out[k] = value.dump();
      } else {
        errors_.Add(Path(key) + "." + k, "must be a string");
      }
    }
  }
  Errors& errors() { return errors_; }

 private:
  const nlohmann::json& json_;
  std::string path_;
  Errors& errors_;
  std::vector<std::string> used_;
};

bool ValidAddress(const std::string& address) { return core::IsHostPort(address); }

// "'x' is not host:port (why)", the reason from the one address parser.
std::string NotHostPort(const std::string& address, std::string_view what = "host:port") {
  auto parsed = core::ParseHostPort(address);
  std::string why = parsed.ok() ? "" : std::string(parsed.status().message());
  if (auto cut = why.find("' "); cut != std::string::npos) why = why.substr(cut + 2);
  if (why.starts_with("is not ")) why.clear();  // nothing to add to "is not host:port"
  return "'" + address + "' is not " + std::string(what) + (why.empty() ? "" : " (" + why + ")");
}

// Drops scheme and path ("https://h:1/x" -> "h:1"); unparseable input is kept
// as it is so validation reports it.
std::string StripScheme(std::string s) {
  auto parsed = core::ParseHostPort(s);
  return parsed.ok() ? parsed->Authority() : s;
}

void ParseInbound(Obj& parent, std::string_view key, std::optional<InboundConfig>& out) {
  const auto* v = parent.Get(key);
  if (v == nullptr || v->is_null()) return;
  const std::string path = parent.Path(key);
  const nlohmann::json* node = v;
  if (v->is_array()) {  // [{address}] as in appsettings: the first entry
    if (v->empty()) return;
    if (v->size() > 1)
      parent.errors().Add(path, "only one " + std::string(key) + " inbound is supported");
    node = &(*v)[0];
  }
  Obj obj(*node, path, parent.errors());
  InboundConfig inbound;
  obj.String("address", inbound.address);
  std::vector<std::string> urls;
  obj.Strings("urls", urls);
  if (inbound.address.empty() && !urls.empty()) {
    inbound.https_url = urls.front().rfind("https://", 0) == 0;
    inbound.address = StripScheme(urls.front());
  }
  obj.Int("threads", inbound.threads, 1);
  if (key == "http") {
    obj.Int("maxHeaderBytes", inbound.max_header_bytes, 256);
    obj.Int("maxBodyBytes", inbound.max_body_bytes, 0);
    obj.Dur("headerTimeout", inbound.header_timeout);
    obj.Dur("bodyTimeout", inbound.body_timeout);
    for (auto [name, value] : {std::pair{"headerTimeout", inbound.header_timeout},
                               std::pair{"bodyTimeout", inbound.body_timeout}}) {
      if (value <= core::Duration::zero())
        parent.errors().Add(path + "." + name, "must be positive");
    }
  } else {
    obj.Int("maxStreams", inbound.max_streams, 1);
  }
  if (inbound.address.empty()) {
    parent.errors().Add(path + ".address", "is required");
  } else if (!ValidAddress(inbound.address)) {
    parent.errors().Add(path + ".address", NotHostPort(inbound.address));
  }
  out = inbound;
}

void ParseProfile(Obj& obj, RateLimitProfileConfig& p) {
  obj.Int("maxConcurrency", p.max_concurrency);
  obj.Double("tokensPerSecond", p.tokens_per_second);
  obj.Double("burst", p.burst);
}

// Splits "a.b.c" into parts.
std::vector<std::string> SplitPath(std::string_view key, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t pos = key.find(sep, start);
    parts.emplace_back(key.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return parts;
}

absl::Status SetPath(nlohmann::json& root, std::vector<std::string> parts, nlohmann::json value) {
  if (parts.empty() || Lower(parts[0]) != "omnirelay") parts.insert(parts.begin(), "omniRelay");
  nlohmann::json* node = &root;
  std::string path;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty()) return absl::InvalidArgumentError("empty key segment in '" + path + "'");
    path += (path.empty() ? "" : ".") + parts[i];
    if (node->is_null()) *node = nlohmann::json::object();
    if (node->is_array()) {
      size_t index = 0;
      try {
        index = std::stoul(parts[i]);
      } catch (...) {
        return absl::InvalidArgumentError(path + ": list index expected");
      }
      if (index > node->size()) return absl::InvalidArgumentError(path + ": index out of range");
      if (index == node->size()) node->push_back(nullptr);
      node = &(*node)[index];
      continue;
    }
    if (!node->is_object()) return absl::InvalidArgumentError(path + ": parent is not an object");
    std::string key = parts[i];
    for (auto& [k, v] : node->items()) {
      if (Lower(k) == Lower(parts[i])) key = k;
    }
    node = &(*node)[key];
  }
  *node = std::move(value);
  return absl::OkStatus();
}

nlohmann::json ParseValue(const std::string& text) {
  auto parsed = nlohmann::json::parse(text, nullptr, false);
  if (parsed.is_discarded()) return text;
  return parsed;
}

// Configuration is small and shallow; anything deeper or larger is hostile or
// an alias cycle (`a: &x {b: *x}` makes yaml-cpp return a cyclic graph), which
// would recurse forever (or, with several aliases, explode). Found by the
// config_yaml fuzz target (corpus: alias-loop.yaml).
constexpr int kMaxYamlDepth = 64;
constexpr int kMaxYamlNodes = 100000;

struct YamlWalk {
  int nodes = 0;
  bool refused = false;
};

nlohmann::json YamlNode(const YAML::Node& node, int depth, YamlWalk& walk) {
  if (walk.refused || depth > kMaxYamlDepth || ++walk.nodes > kMaxYamlNodes) {
    walk.refused = true;
    return nullptr;
  }
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& kv : node)
        out[kv.first.as<std::string>()] = YamlNode(kv.second, depth + 1, walk);
      return out;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(YamlNode(item, depth + 1, walk));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string text = node.Scalar();
      if (node.Tag() == "!") return text;  // quoted scalar stays a string
      if (text == "true" || text == "True") return true;
      if (text == "false" || text == "False") return false;
      if (text == "null" || text == "~") return nullptr;
      auto parsed = nlohmann::json::parse(text, nullptr, false);
      if (!parsed.is_discarded() && parsed.is_number()) return parsed;
      return text;
    }
    default:
      return nullptr;
  }
}

// The `circuitBreaker` block of an outbound and of a gateway cluster.
void ParseCircuitBreaker(Obj& parent, const std::string& path, Errors& errors,
                         CircuitBreakerConfig& out) {
  if (const auto* cb = parent.Get("circuitBreaker")) {
    Obj b(*cb, path + ".circuitBreaker", errors);
    b.Bool("enabled", out.enabled);
    b.Int("consecutiveFailures", out.consecutive_failures, 1);
    b.Dur("openDelay", out.open_delay);
  }
}

void ParseGateway(const nlohmann::json& value, Errors& errors, GatewayConfig& gw) {
  const std::string path = "omniRelay.gateway";
  Obj g(value, path, errors);
  g.String("address", gw.address);
  if (gw.address.empty()) {
    errors.Add(path + ".address", "is required");
  } else if (!ValidAddress(gw.address)) {
    errors.Add(path + ".address", NotHostPort(gw.address));
  }
  if (const auto* jwt = g.Get("jwt")) {
    Obj j(*jwt, path + ".jwt", errors);
    j.String("secretFile", gw.jwt_secret_file);
    j.Bool("createIfMissing", gw.jwt_create_if_missing);
  }
  if (const auto* clusters = g.Get("clusters")) {
    if (!clusters->is_object()) {
      errors.Add(path + ".clusters", "must be an object of named clusters");
    } else {
      for (const auto& [name, value] : clusters->items()) {
        const std::string cpath = path + ".clusters." + name;
        Obj c(value, cpath, errors);
        GatewayClusterConfig cluster;
        cluster.name = name;
        c.Strings("endpoints", cluster.endpoints);
        c.String("registry", cluster.registry);
        cluster.registry_tls = cluster.registry.rfind("https://", 0) == 0;
        cluster.registry = StripScheme(cluster.registry);
        size_t https = 0;
        for (const auto& e : cluster.endpoints) https += e.rfind("https://", 0) == 0 ? 1 : 0;
        if (https != 0 && https != cluster.endpoints.size()) {
          errors.Add(cpath + ".endpoints",
                     "mixes https:// and plaintext endpoints; use one scheme per cluster");
        }
        // An https:// registry is polled over TLS (the gateway verifies it
        // against omniRelay.tls.caFile, else the system store, and presents
        // the node's certificate for mTLS), never in plaintext.
        cluster.tls = https != 0;
        c.Bool("tls", cluster.tls);
        if (https != 0 && !cluster.tls) {
          errors.Add(cpath + ".tls", "is false but the endpoints are https://");
        }
        c.String("role", cluster.role);
        c.Dur("refreshInterval", cluster.refresh_interval);
        c.Int("occupancy", cluster.occupancy, 0);
        c.Int("maxInFlightPerInstance", cluster.max_in_flight_per_instance, 0);
        ParseCircuitBreaker(c, cpath, errors, cluster.circuit_breaker);
        if (cluster.endpoints.empty() == cluster.registry.empty()) {
          errors.Add(cpath, "needs exactly one of 'endpoints' or 'registry'");
        }
        for (size_t i = 0; i < cluster.endpoints.size(); ++i) {
          cluster.endpoints[i] = StripScheme(cluster.endpoints[i]);
          if (!ValidAddress(cluster.endpoints[i])) {
            errors.Add(cpath + ".endpoints[" + std::to_string(i) + "]",
                       NotHostPort(cluster.endpoints[i], "a host:port endpoint"));
          }
        }
        if (!cluster.registry.empty() && !ValidAddress(cluster.registry)) {
          errors.Add(cpath + ".registry", NotHostPort(cluster.registry));
        }
        if (cluster.refresh_interval <= core::Duration::zero()) {
          errors.Add(cpath + ".refreshInterval", "must be positive");
        }
        gw.clusters[name] = cluster;
      }
    }
  }
  if (gw.clusters.empty()) errors.Add(path + ".clusters", "needs at least one cluster");
  bool needs_jwt = false;
  if (const auto* routes = g.Get("routes")) {
    if (!routes->is_array()) {
      errors.Add(path + ".routes", "must be a list");
    } else {
      for (size_t i = 0; i < routes->size(); ++i) {
        const std::string rpath = path + ".routes[" + std::to_string(i) + "]";
        Obj r((*routes)[i], rpath, errors);
        GatewayRouteConfig route;
        r.String("prefix", route.prefix);
        r.String("cluster", route.cluster);
        r.String("authorization", route.authorization);
        r.String("balancer", route.balancer);
        r.String("stickyHeader", route.sticky_header);
        r.Strings("transferStreams", route.transfer_streams);
        r.String("dataPath", route.data_path);
        route.data_path = Lower(route.data_path);
        if (route.data_path != "auto" && route.data_path != "frame" && route.data_path != "grpc") {
          errors.Add(rpath + ".dataPath",
                     "unknown data path '" + route.data_path + "' (auto, frame, grpc)");
        } else if (route.data_path == "frame" && gw.clusters.count(route.cluster) &&
                   gw.clusters.at(route.cluster).tls) {
          errors.Add(rpath + ".dataPath", "the frame relay does not dial TLS: cluster '" +
                                              route.cluster + "' has tls (use auto or grpc)");
        }
        route.authorization = Lower(route.authorization);
        route.balancer = Lower(route.balancer);
        // gRPC metadata keys are lower case on the wire.
        route.sticky_header = Lower(route.sticky_header);
        if (route.cluster.empty()) {
          errors.Add(rpath + ".cluster", "is required");
        } else if (!gw.clusters.count(route.cluster)) {
          errors.Add(rpath + ".cluster", "unknown cluster '" + route.cluster + "'");
        }
        if (route.authorization != "none" && route.authorization != "required") {
          errors.Add(rpath + ".authorization",
                     "unknown authorization '" + route.authorization + "' (none, required)");
        }
        needs_jwt = needs_jwt || route.authorization == "required";
        if (route.balancer != "round-robin" && route.balancer != "sticky") {
          errors.Add(rpath + ".balancer",
                     "unknown balancer '" + route.balancer + "' (round-robin, sticky)");
        }
        if (route.balancer == "sticky" && route.sticky_header.empty()) {
          errors.Add(rpath + ".stickyHeader", "must not be empty for a sticky route");
        }
        for (size_t k = 0; k < route.transfer_streams.size(); ++k) {
          const std::string& method = route.transfer_streams[k];
          if (!method.starts_with("/") || !method.starts_with(route.prefix)) {
            errors.Add(
                rpath + ".transferStreams[" + std::to_string(k) + "]",
                "'" + method + "' is not a full method name under prefix '" + route.prefix + "'");
          }
        }
        gw.routes.push_back(route);
      }
    }
  }
  if (const auto* def = g.Get("defaultRoute")) {
    const std::string dpath = path + ".defaultRoute";
    Obj d(*def, dpath, errors);
    gw.default_route.error.clear();
    d.String("error", gw.default_route.error);
    d.String("cluster", gw.default_route.cluster);
    if (gw.default_route.error.empty() == gw.default_route.cluster.empty()) {
      errors.Add(dpath, "needs exactly one of 'error' or 'cluster'");
    }
    if (!gw.default_route.cluster.empty() && !gw.clusters.count(gw.default_route.cluster)) {
      errors.Add(dpath + ".cluster", "unknown cluster '" + gw.default_route.cluster + "'");
    }
    const auto& codes = StatusCodeNames();
    if (!gw.default_route.error.empty()) {
      std::string upper = gw.default_route.error;
      for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      gw.default_route.error = upper;
      if (std::find(codes.begin() + 1, codes.end(), upper) == codes.end()) {
        errors.Add(dpath + ".error",
                   "unknown status code '" + upper + "' (a gRPC code name other than OK)");
      }
    }
  }
  g.Int("maxAttempts", gw.max_attempts, 1);
  g.Int("frameThreads", gw.frame_threads, 1);
  g.Dur("attemptTimeout", gw.attempt_timeout);
  if (gw.attempt_timeout <= core::Duration::zero()) {
    errors.Add(path + ".attemptTimeout", "must be positive");
  }
  if (needs_jwt && gw.jwt_secret_file.empty()) {
    errors.Add(path + ".jwt.secretFile", "is required when a route has authorization: required");
  }
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 128 || !std::isalnum(static_cast<unsigned char>(name[0]))) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

void ParseMeshSelector(const nlohmann::json& value, const std::string& path, Errors& errors,
                       MeshSelectorConfig& out) {
  Obj m(value, path, errors);
  m.String("role", out.role);
  m.String("region", out.region);
  m.String("zone", out.zone);
  m.StringMap("labels", out.labels);
}

void ParseMesh(const nlohmann::json& value, const NodeConfig& node, Errors& errors,
               MeshConfig& mesh) {
  const std::string path = "omniRelay.mesh";
  Obj m(value, path, errors);
  auto& id = mesh.identity;
  m.String("nodeId", id.node_id);
  if (id.node_id.empty()) id.node_id = node.service;
  if (!ValidName(id.node_id)) {
    errors.Add(path + ".nodeId", "'" + id.node_id +
                                     "' is not a valid node id (letters, digits, '_', '.', '-'; "
                                     "starts with a letter or digit; at most 128 characters)");
  }
  m.String("clusterName", id.cluster_name);
  if (!ValidName(id.cluster_name)) {
    errors.Add(path + ".clusterName", "'" + id.cluster_name + "' is not a valid cluster name");
  }
  m.Strings("roles", id.roles);
  for (size_t i = 0; i < id.roles.size(); ++i) {
    if (!ValidName(id.roles[i])) {
      errors.Add(path + ".roles[" + std::to_string(i) + "]",
                 "'" + id.roles[i] + "' is not a valid role name");
    }
  }
  m.String("region", id.region);
  m.String("zone", id.zone);
  m.StringMap("labels", id.labels);
  m.String("advertiseAddress", id.advertise_address);
  id.advertise_address = StripScheme(id.advertise_address);
  if (!id.advertise_address.empty() && !ValidAddress(id.advertise_address)) {
    errors.Add(path + ".advertiseAddress", "'" + id.advertise_address + "' is not host:port");
  }
  m.StringMap("advertiseEndpoints", id.advertise_endpoints);
  for (auto& [transport, address] : id.advertise_endpoints) {
    if (transport != "grpc" && transport != "http") {
      errors.Add(path + ".advertiseEndpoints." + transport, "unknown transport (grpc, http)");
    }
    address = StripScheme(address);
    if (!ValidAddress(address)) {
      errors.Add(path + ".advertiseEndpoints." + transport, "'" + address + "' is not host:port");
    }
  }
  m.Strings("seeds", mesh.seeds);
  for (size_t i = 0; i < mesh.seeds.size(); ++i) {
    mesh.seeds[i] = StripScheme(mesh.seeds[i]);
    if (!ValidAddress(mesh.seeds[i])) {
      errors.Add(path + ".seeds[" + std::to_string(i) + "]",
                 "'" + mesh.seeds[i] + "' is not host:port");
    }
  }
  m.StringMap("peerAddresses", mesh.peer_addresses);
  for (auto& [peer, address] : mesh.peer_addresses) {
    address = StripScheme(address);
    if (!ValidAddress(address)) {
      errors.Add(path + ".peerAddresses." + peer, "'" + address + "' is not host:port");
    }
  }
  if (const auto* gossip = m.Get("gossip")) {
    const std::string gpath = path + ".gossip";
    Obj g(*gossip, gpath, errors);
    auto& o = mesh.gossip;
    g.String("profile", o.profile);
    o.profile = Lower(o.profile);
    if (o.profile != "lan" && o.profile != "test") {
      errors.Add(gpath + ".profile", "unknown profile '" + o.profile + "' (lan, test)");
    }
    auto dur = [&](std::string_view key, std::optional<core::Duration>& out) {
      if (g.Get(key) == nullptr) return;
      core::Duration d{0};
      g.Dur(key, d);
      if (d <= core::Duration::zero()) {
        errors.Add(gpath + "." + std::string(key), "must be positive");
      }
      out = d;
    };
    auto integer = [&](std::string_view key, std::optional<int>& out, int min) {
      if (g.Get(key) == nullptr) return;
      int n = min;
      g.Int(key, n, min);
      out = n;
    };
    dur("probeInterval", o.probe_interval);
    dur("probeTimeout", o.probe_timeout);
    integer("indirectChecks", o.indirect_checks, 0);
    integer("suspicionMult", o.suspicion_mult, 1);
    integer("suspicionMaxTimeoutMult", o.suspicion_max_timeout_mult, 1);
    integer("retransmitMult", o.retransmit_mult, 1);
    dur("gossipInterval", o.gossip_interval);
    integer("gossipNodes", o.gossip_nodes, 1);
    dur("gossipToTheDead", o.gossip_to_the_dead);
    dur("pushPullInterval", o.push_pull_interval);
    dur("reconnectInterval", o.reconnect_interval);
    dur("deadRetention", o.dead_retention);
    dur("sendTimeout", o.send_timeout);
  }
  if (!node.grpc) {
    errors.Add(path, "needs omniRelay.inbounds.grpc: gossip runs on the node's gRPC listener");
  }
}

bool ValidLeadershipScope(const std::string& scope) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t slash = scope.find('/', start);
    parts.push_back(scope.substr(start, slash == std::string::npos ? slash : slash - start));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  if (parts.size() == 1) return parts[0] == "global";
  if (parts.size() == 2) return parts[0] == "region" && ValidName(parts[1]);
  if (parts.size() == 3) return parts[0] == "shard" && ValidName(parts[1]) && ValidName(parts[2]);
  return false;
}

void ParseLeadership(const nlohmann::json& value, Errors& errors, LeadershipConfig& out) {
  const std::string path = "omniRelay.leadership";
  Obj l(value, path, errors);
  l.String("store", out.store);
  out.store = Lower(out.store);
  if (out.store != "sqlite" && out.store != "etcd" && out.store != "memory") {
    errors.Add(path + ".store", "unknown store '" + out.store + "' (sqlite, etcd, memory)");
  }
  l.String("path", out.path);
  l.Strings("endpoints", out.endpoints);
  for (auto& endpoint : out.endpoints) {
    endpoint = StripScheme(endpoint);
    if (!ValidAddress(endpoint)) {
      errors.Add(path + ".endpoints", "'" + endpoint + "' is not host:port");
    }
  }
  if (out.store == "etcd" && out.endpoints.empty()) {
    errors.Add(path + ".endpoints", "the etcd store needs at least one endpoint");
  }
  if (out.store == "sqlite" && out.path.empty()) {
    errors.Add(path + ".path", "the sqlite store needs a database path");
  }
  l.String("profile", out.profile);
  out.profile = Lower(out.profile);
  if (out.profile == "fast") {
    out.lease_ttl = std::chrono::seconds(2);
    out.bootstrap_step = std::chrono::seconds(1);
    out.failover_step = std::chrono::milliseconds(200);
  } else if (out.profile != "default") {
    errors.Add(path + ".profile", "unknown profile '" + out.profile + "' (default, fast)");
  }
  l.Dur("leaseTtl", out.lease_ttl);
  l.Dur("bootstrapStep", out.bootstrap_step);
  l.Dur("failoverStep", out.failover_step);
  l.Dur("maxClockSkew", out.max_clock_skew);
  l.Dur("dialTimeout", out.dial_timeout);
  if (out.lease_ttl < std::chrono::milliseconds(100)) {
    errors.Add(path + ".leaseTtl", "must be at least 100ms");
  }
  if (const auto* scopes = l.Get("scopes")) {
    if (!scopes->is_array()) {
      errors.Add(path + ".scopes", "must be a list");
    } else {
      for (size_t i = 0; i < scopes->size(); ++i) {
        const std::string spath = path + ".scopes[" + std::to_string(i) + "]";
        LeadershipScopeConfig scope;
        if ((*scopes)[i].is_string()) {
          scope.scope = (*scopes)[i].get<std::string>();
        } else {
          Obj s(*&(*scopes)[i], spath, errors);
          s.String("scope", scope.scope);
          s.Int("priority", scope.priority, 0);
        }
        if (!ValidLeadershipScope(scope.scope)) {
          errors.Add(spath, "'" + scope.scope +
                                "' is not a scope (global, region/<name>, shard/<namespace>/<id>)");
        }
        out.scopes.push_back(std::move(scope));
      }
    }
  }
  l.Strings("observe", out.observe);
  for (const auto& scope : out.observe) {
    if (!ValidLeadershipScope(scope)) {
      errors.Add(path + ".observe", "'" + scope + "' is not a scope");
    }
  }
  l.Bool("promoteRegionalToGlobal", out.promote_regional_to_global);
  l.Int("promotionPriority", out.promotion_priority, 0);
}

// The `geo` block of an outbound and of a shard namespace (docs/peers.md "geo").
GeoRoutingConfig ParseGeoRouting(const nlohmann::json& geo, const std::string& gpath,
                                 Errors& errors) {
  const auto choosers = peers::ChooserNames();
  Obj g(geo, gpath, errors);
  GeoRoutingConfig cfg;
  g.String("region", cfg.region);
  g.Double("latencyThresholdMs", cfg.latency_threshold_ms);
  g.String("latencySignal", cfg.latency_signal);
  cfg.latency_signal = Lower(cfg.latency_signal);
  if (!peers::ParseGeoLatencySignal(cfg.latency_signal).ok()) {
    errors.Add(gpath + ".latencySignal",
               "unknown signal '" + cfg.latency_signal + "' (ewma, p50, p90, p99)");
  }
  g.Double("failureRateThreshold", cfg.failure_rate_threshold);
  if (cfg.failure_rate_threshold > 1) {
    errors.Add(gpath + ".failureRateThreshold", "must be within [0, 1]");
  }
  g.Int("minSamples", cfg.min_samples, 1);
  g.Dur("holdMs", cfg.hold);
  g.Dur("returnAfter", cfg.hold);
  g.Dur("evaluateEveryMs", cfg.evaluate_every);
  if (cfg.evaluate_every <= core::Duration::zero()) {
    errors.Add(gpath + ".evaluateEveryMs", "must be positive");
  }
  g.Int("probeEvery", cfg.probe_every);
  g.String("innerChooser", cfg.inner_chooser);
  if (std::find(choosers.begin(), choosers.end(), cfg.inner_chooser) == choosers.end()) {
    std::string known;
    for (const auto& c : choosers) known += (known.empty() ? "" : ", ") + c;
    errors.Add(gpath + ".innerChooser",
               "unknown chooser '" + cfg.inner_chooser + "' (known: " + known + ")");
  }
  return cfg;
}

void ParseShards(const nlohmann::json& value, const NodeConfig& node, Errors& errors,
                 ShardsConfig& out) {
  const std::string path = "omniRelay.shards";
  Obj s(value, path, errors);
  s.Dur("reconcileInterval", out.reconcile_interval);
  if (out.reconcile_interval < std::chrono::milliseconds(10)) {
    errors.Add(path + ".reconcileInterval", "must be at least 10ms");
  }
  s.Dur("rebalanceCooldown", out.rebalance_cooldown);
  const auto* namespaces = s.Get("namespaces");
  if (namespaces == nullptr || !namespaces->is_object() || namespaces->empty()) {
    errors.Add(path + ".namespaces", "needs at least one namespace");
  } else {
    for (const auto& [name, body] : namespaces->items()) {
      const std::string npath = path + ".namespaces." + name;
      if (!ValidName(name)) {
        errors.Add(npath, "'" + name + "' is not a valid namespace name ([A-Za-z0-9._-])");
      }
      ShardNamespaceConfig ns;
      Obj n(body, npath, errors);
      n.Int("shards", ns.shards, 1);
      if (ns.shards > (1 << 20)) errors.Add(npath + ".shards", "must be at most 1048576");
      n.String("strategy", ns.strategy);
      ns.strategy = Lower(ns.strategy);
      if (ns.strategy == "consistent-hash") ns.strategy = "ring";
      if (ns.strategy == "hrw") ns.strategy = "rendezvous";
      if (ns.strategy == "locality-aware") ns.strategy = "locality";
      if (ns.strategy != "ring" && ns.strategy != "rendezvous" && ns.strategy != "locality") {
        errors.Add(npath + ".strategy",
                   "unknown strategy '" + ns.strategy + "' (ring, rendezvous, locality)");
      }
      n.Int("replicas", ns.replicas, 0);
      if (ns.replicas > 16) errors.Add(npath + ".replicas", "must be at most 16");
      n.Int("virtualNodes", ns.virtual_nodes, 1);
      if (ns.virtual_nodes > 4096) errors.Add(npath + ".virtualNodes", "must be at most 4096");
      n.Double("budget", ns.budget, 0);
      n.String("leaderScope", ns.leader_scope);
      if (!ValidLeadershipScope(ns.leader_scope)) {
        errors.Add(npath + ".leaderScope",
                   "'" + ns.leader_scope +
                       "' is not a scope (global, region/<name>, shard/<namespace>/<id>)");
      }
      n.String("ownerRole", ns.owner_role);
      if (const auto* locality = n.Get("locality")) {
        Obj l(*locality, npath + ".locality", errors);
        l.String("region", ns.region);
        l.String("zone", ns.zone);
      }
      if (ns.strategy != "locality" && (!ns.region.empty() || !ns.zone.empty())) {
        errors.Add(npath + ".locality", "only the locality strategy uses a preferred region/zone");
      }
      n.String("service", ns.service);
      n.String("localService", ns.local_service);
      if (!ns.service.empty() && ns.local_service.empty()) {
        errors.Add(npath + ".localService",
                   "needed with service: the owner serves the calls with this service's "
                   "procedures");
      }
      if (!ns.service.empty() && ns.service == ns.local_service) {
        errors.Add(npath + ".localService", "must differ from service (it would route to itself)");
      }
      if (const auto* streams = n.Get("streams"); streams != nullptr && !streams->is_null()) {
        if (!streams->is_object()) {
          errors.Add(npath + ".streams", "must map procedure names to stream kinds");
        } else {
          for (const auto& [procedure, kind] : streams->items()) {
            const std::string k = kind.is_string() ? Lower(kind.get<std::string>()) : "";
            if (k != "server-stream" && k != "client-stream" && k != "duplex") {
              errors.Add(npath + ".streams." + procedure,
                         "unknown stream kind (server-stream, client-stream, duplex)");
            }
            ns.streams[procedure] = k;
          }
        }
      }
      if (const auto* geo = n.Get("geo"); geo != nullptr && !geo->is_null()) {
        ns.geo = ParseGeoRouting(*geo, npath + ".geo", errors);
        if (ns.service.empty()) errors.Add(npath + ".geo", "needs service (the routed calls)");
        if (ns.geo->region.empty() && (!node.mesh || node.mesh->identity.region.empty())) {
          errors.Add(npath + ".geo.region", "needed when the node has no mesh region");
        }
      }
      if (const auto* forward = n.Get("forward"); forward != nullptr && !forward->is_null()) {
        Obj f(*forward, npath + ".forward", errors);
        f.Int("maxInFlightPerPeer", ns.forward_max_in_flight_per_peer, 0);
        f.Int("breakerFailures", ns.forward_breaker_failures, 0);
        f.Dur("breakerOpenDelay", ns.forward_breaker_open_delay);
        f.Int("threads", ns.forward_threads, 1);
      }
      out.namespaces[name] = std::move(ns);
    }
  }
  if (!node.mesh) errors.Add(path, "needs omniRelay.mesh: members own the shards");
  if (!node.leadership) {
    errors.Add(path, "needs omniRelay.leadership: the scope's leader writes each map");
  }
}

}  // namespace

nlohmann::json ShardsToJson(const ShardsConfig& c) {
  nlohmann::json namespaces = nlohmann::json::object();
  for (const auto& [name, n] : c.namespaces) {
    namespaces[name] = {
        {"shards", n.shards},        {"strategy", n.strategy},
        {"replicas", n.replicas},    {"virtualNodes", n.virtual_nodes},
        {"budget", n.budget},        {"leaderScope", n.leader_scope},
        {"ownerRole", n.owner_role}, {"locality", {{"region", n.region}, {"zone", n.zone}}},
        {"service", n.service},      {"localService", n.local_service},
        {"streams", n.streams}};
    namespaces[name]["forward"] = {
        {"maxInFlightPerPeer", n.forward_max_in_flight_per_peer},
        {"breakerFailures", n.forward_breaker_failures},
        {"breakerOpenDelayMs",
         std::chrono::duration_cast<std::chrono::milliseconds>(n.forward_breaker_open_delay)
             .count()},
        {"threads", n.forward_threads}};
    if (n.geo) {
      namespaces[name]["geo"] = {
          {"region", n.geo->region},
          {"latencyThresholdMs", n.geo->latency_threshold_ms},
          {"latencySignal", n.geo->latency_signal},
          {"failureRateThreshold", n.geo->failure_rate_threshold},
          {"minSamples", n.geo->min_samples},
          {"holdMs", std::chrono::duration_cast<std::chrono::milliseconds>(n.geo->hold).count()},
          {"evaluateEveryMs",
           std::chrono::duration_cast<std::chrono::milliseconds>(n.geo->evaluate_every).count()},
          {"probeEvery", n.geo->probe_every},
          {"innerChooser", n.geo->inner_chooser}};
    }
  }
  return {{"reconcileIntervalMs",
           std::chrono::duration_cast<std::chrono::milliseconds>(c.reconcile_interval).count()},
          {"rebalanceCooldownMs",
           std::chrono::duration_cast<std::chrono::milliseconds>(c.rebalance_cooldown).count()},
          {"namespaces", namespaces}};
}

nlohmann::json LeadershipToJson(const LeadershipConfig& l) {
  auto ms = [](core::Duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  nlohmann::json scopes = nlohmann::json::array();
  for (const auto& scope : l.scopes) {
    scopes.push_back({{"scope", scope.scope}, {"priority", scope.priority}});
  }
  return {{"store", l.store},
          {"path", l.path},
          {"endpoints", l.endpoints},
          {"profile", l.profile},
          {"leaseTtlMs", ms(l.lease_ttl)},
          {"bootstrapStepMs", ms(l.bootstrap_step)},
          {"failoverStepMs", ms(l.failover_step)},
          {"maxClockSkewMs", ms(l.max_clock_skew)},
          {"dialTimeoutMs", ms(l.dial_timeout)},
          {"scopes", scopes},
          {"observe", l.observe},
          {"promoteRegionalToGlobal", l.promote_regional_to_global},
          {"promotionPriority", l.promotion_priority}};
}

const std::vector<std::string>& StatusCodeNames() {
  static const std::vector<std::string> names = {"OK",
                                                 "CANCELLED",
                                                 "UNKNOWN",
                                                 "INVALID_ARGUMENT",
                                                 "DEADLINE_EXCEEDED",
                                                 "NOT_FOUND",
                                                 "ALREADY_EXISTS",
                                                 "PERMISSION_DENIED",
                                                 "RESOURCE_EXHAUSTED",
                                                 "FAILED_PRECONDITION",
                                                 "ABORTED",
                                                 "OUT_OF_RANGE",
                                                 "UNIMPLEMENTED",
                                                 "INTERNAL",
                                                 "UNAVAILABLE",
                                                 "DATA_LOSS",
                                                 "UNAUTHENTICATED"};
  return names;
}

const std::vector<std::string>& MiddlewareNames() {
  static const std::vector<std::string> names = {"recovery",  "tracing",  "metrics",    "logging",
                                                 "principal", "deadline", "rate-limit", "retry"};
  return names;
}

std::vector<std::string> KnownChoosers() { return peers::ChooserNames(); }

absl::StatusOr<nlohmann::json> YamlToJson(const std::string& text) {
  try {
    YamlWalk walk;
    nlohmann::json out = YamlNode(YAML::Load(text), 0, walk);
    if (walk.refused) {
      return absl::InvalidArgumentError("YAML: deeper than " + std::to_string(kMaxYamlDepth) +
                                        " levels or more than " + std::to_string(kMaxYamlNodes) +
                                        " nodes (an alias that refers to itself?)");
    }
    return out;
  } catch (const YAML::Exception& error) {
    return absl::InvalidArgumentError(std::string("YAML: ") + error.what());
  }
}

absl::StatusOr<nlohmann::json> LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read config file '" + path + "'");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  const bool yaml = path.ends_with(".yaml") || path.ends_with(".yml");
  if (yaml) {
    auto parsed = YamlToJson(text);
    if (!parsed.ok())
      return absl::InvalidArgumentError(path + ": " + std::string(parsed.status().message()));
    return parsed;
  }
  auto parsed = nlohmann::json::parse(text, nullptr, false, /*ignore_comments=*/true);
  if (parsed.is_discarded()) return absl::InvalidArgumentError(path + ": not valid JSON");
  return parsed;
}

absl::Status ApplyEnvironment(nlohmann::json& root, char** environ_list) {
  char** env = environ_list != nullptr ? environ_list : environ;
  for (; env != nullptr && *env != nullptr; ++env) {
    std::string_view entry(*env);
    if (!entry.starts_with("OMNIRELAY__")) continue;
    const auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    std::string key(entry.substr(std::string_view("OMNIRELAY__").size(),
                                 eq - std::string_view("OMNIRELAY__").size()));
    std::vector<std::string> parts;
    for (auto& p : SplitPath(key, '_')) parts.push_back(p);
    // "__" separates levels; single underscores inside a segment are rare in
    // our keys, so split on "__" only.
    parts.clear();
    size_t start = 0;
    for (;;) {
      size_t pos = key.find("__", start);
      parts.push_back(key.substr(start, pos == std::string::npos ? pos : pos - start));
      if (pos == std::string::npos) break;
      start = pos + 2;
    }
    if (auto s = SetPath(root, parts, ParseValue(std::string(entry.substr(eq + 1)))); !s.ok()) {
      return absl::InvalidArgumentError("environment " + std::string(entry.substr(0, eq)) + ": " +
                                        std::string(s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplySets(nlohmann::json& root, const std::vector<std::string>& sets) {
  for (const auto& set : sets) {
    const auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError("--set '" + set + "': expected key=value");
    }
    if (auto s = SetPath(root, SplitPath(set.substr(0, eq), '.'), ParseValue(set.substr(eq + 1)));
        !s.ok()) {
      return absl::InvalidArgumentError("--set '" + set + "': " + std::string(s.message()));
    }
  }
  return absl::OkStatus();
}

namespace {

bool ValidNamespace(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!(std::islower(static_cast<unsigned char>(c)) ||
          std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

void ParseResourceLease(const nlohmann::json& value, Errors& errors, NodeConfig& config) {
  const std::string base = "omniRelay.resourceLease";
  ResourceLeaseConfig rl;
  Obj o(value, base, errors);
  bool enabled = true;
  o.Bool("enabled", enabled);
  o.Dur("maxLeaseWait", rl.max_lease_wait);
  o.Bool("throttleNode", rl.throttle_node);
  if (const auto* namespaces = o.Get("namespaces")) {
    if (!namespaces->is_object()) {
      errors.Add(base + ".namespaces", "must be an object of namespace -> queue options");
    } else {
      for (const auto& [name, q] : namespaces->items()) {
        const std::string path = base + ".namespaces." + name;
        if (!ValidNamespace(name)) {
          errors.Add(path, "namespace must be lower-case letters, digits, '-', '_' or '.'");
          continue;
        }
        ResourceLeaseQueueConfig qc;
        // `billing: null` (or `billing:` in YAML) means all defaults. Obj keeps a
        // reference, so the empty object must outlive it.
        const nlohmann::json options = q.is_null() ? nlohmann::json::object() : q;
        Obj qo(options, path, errors);
        qo.Int("capacity", qc.capacity);
        qo.Dur("leaseDuration", qc.lease_duration);
        qo.Int("maxAttempts", qc.max_attempts, 1);
        qo.Int("highWatermark", qc.high_watermark);
        qo.Int("lowWatermark", qc.low_watermark);
        qo.Dur("retryAfter", qc.retry_after);
        qo.Int("maxBodyBytes", qc.max_body_bytes, 1);
        qo.Int("completedRetention", qc.completed_retention);
        if (qc.lease_duration <= core::Duration::zero()) {
          errors.Add(path + ".leaseDuration", "must be positive");
        }
        if (qc.high_watermark > 0 && qc.low_watermark >= qc.high_watermark) {
          errors.Add(path + ".lowWatermark",
                     "must be below highWatermark (" + std::to_string(qc.high_watermark) + ")");
        }
        if (qc.capacity > 0 && qc.high_watermark > qc.capacity) {
          errors.Add(path + ".highWatermark",
                     "must not exceed capacity (" + std::to_string(qc.capacity) + ")");
        }
        rl.namespaces[name] = qc;
      }
    }
  }
  if (const auto* rep = o.Get("replication"); rep != nullptr && !rep->is_null()) {
    const std::string path = base + ".replication";
    ResourceLeaseReplicationConfig rc;
    Obj ro(*rep, path, errors);
    bool rep_enabled = true;
    ro.Bool("enabled", rep_enabled);
    ro.String("kind", rc.kind);
    ro.String("path", rc.path);
    ro.String("hub", rc.hub);
    ro.Bool("durableAck", rc.durable_ack);
    ro.String("shard", rc.shard);
    ro.String("table", rc.table);
    ro.Int("maxBatch", rc.max_batch, 1);
    ro.Int("maxBuffered", rc.max_buffered, 0);
    if (rc.kind != "sqlite" && rc.kind != "file" && rc.kind != "memory" && rc.kind != "grpc") {
      errors.Add(path + ".kind", "must be sqlite, file, memory or grpc, got '" + rc.kind + "'");
    }
    if ((rc.kind == "sqlite" || rc.kind == "file") && rc.path.empty()) {
      errors.Add(path + ".path", "is required for kind " + rc.kind);
    }
    if (rc.kind == "grpc" && rc.hub.empty()) {
      errors.Add(path + ".hub", "is required for kind grpc (host:port of the hub)");
    }
    if (const auto* det = ro.Get("deterministic"); det != nullptr && !det->is_null()) {
      Obj dobj(*det, path + ".deterministic", errors);
      dobj.String("kind", rc.deterministic.kind);
      dobj.String("path", rc.deterministic.path);
      dobj.String("changeId", rc.deterministic.change_id);
      dobj.String("effectIdFormat", rc.deterministic.effect_id_format);
      const std::string& k = rc.deterministic.kind;
      if (!k.empty() && k != "sqlite" && k != "file" && k != "memory" && k != "none") {
        errors.Add(path + ".deterministic.kind",
                   "must be sqlite, file, memory or none, got '" + k + "'");
      }
    }
    if (rep_enabled) rl.replication = std::move(rc);
  }
  if (!enabled) return;
  if (rl.namespaces.empty()) rl.namespaces["default"] = ResourceLeaseQueueConfig{};
  config.resource_lease = std::move(rl);
}

}  // namespace

absl::StatusOr<NodeConfig> Parse(const nlohmann::json& root) {
  Errors errors;
  NodeConfig config;
  if (!root.is_object()) return absl::InvalidArgumentError("configuration: must be an object");
  const nlohmann::json* section = nullptr;
  for (const auto& [k, v] : root.items()) {
    if (Lower(k) == "omnirelay") section = &v;
  }
  if (section == nullptr) return absl::InvalidArgumentError("omniRelay: section is missing");
  {
    Obj top(*section, "omniRelay", errors);
    top.String("service", config.service);
    if (config.service.empty()) errors.Add("omniRelay.service", "must not be empty");
    if (const auto* inbounds = top.Get("inbounds")) {
      Obj in(*inbounds, "omniRelay.inbounds", errors);
      ParseInbound(in, "grpc", config.grpc);
      ParseInbound(in, "http", config.http);
    }
    if (const auto* admin = top.Get("admin")) {
      Obj a(*admin, "omniRelay.admin", errors);
      a.String("address", config.admin_address);
      a.String("tokenFile", config.admin.token_file);
      a.String("readAccess", config.admin.read_access);
      config.admin.read_access = Lower(config.admin.read_access);
      if (config.admin.read_access != "open" && config.admin.read_access != "token") {
        errors.Add("omniRelay.admin.readAccess",
                   "unknown access '" + config.admin.read_access + "' (open, token)");
      } else if (config.admin.read_access == "token" && config.admin.token_file.empty()) {
        errors.Add("omniRelay.admin.readAccess", "'token' needs omniRelay.admin.tokenFile");
      }
      a.Bool("tls", config.admin.tls);
      if (!ValidAddress(config.admin_address)) {
        errors.Add("omniRelay.admin.address", NotHostPort(config.admin_address));
      }
    }
    config.admin.address = config.admin_address;
    if (const auto* tls = top.Get("tls"); tls != nullptr && !tls->is_null()) {
      Obj t(*tls, "omniRelay.tls", errors);
      TlsConfig out;
      t.String("certFile", out.cert_file);
      t.String("keyFile", out.key_file);
      t.String("caFile", out.ca_file);
      t.String("clientCertificate", out.client_certificate);
      t.Dur("reloadInterval", out.reload_interval);
      out.client_certificate = Lower(out.client_certificate);
      if (out.cert_file.empty()) errors.Add("omniRelay.tls.certFile", "is required");
      if (out.key_file.empty()) errors.Add("omniRelay.tls.keyFile", "is required");
      if (out.client_certificate != "none" && out.client_certificate != "request" &&
          out.client_certificate != "require") {
        errors.Add("omniRelay.tls.clientCertificate",
                   "unknown mode '" + out.client_certificate + "' (none, request, require)");
      } else if (out.client_certificate != "none" && out.ca_file.empty()) {
        errors.Add("omniRelay.tls.caFile",
                   "is required when clientCertificate is '" + out.client_certificate + "'");
      }
      if (out.reload_interval <= core::Duration::zero()) {
        errors.Add("omniRelay.tls.reloadInterval", "must be positive");
      }
      config.tls = out;
    }
    if (const auto* principal = top.Get("principal")) {
      Obj p(*principal, "omniRelay.principal", errors);
      p.Strings("trustedProxies", config.principal.trusted_proxies);
      p.String("jwtSecretFile", config.principal.jwt_secret_file);
    }
    if (const auto* drain = top.Get("drain")) {
      Obj d(*drain, "omniRelay.drain", errors);
      d.Dur("timeout", config.drain_timeout);
    }
    const auto choosers = KnownChoosers();
    if (const auto* outbounds = top.Get("outbounds")) {
      if (!outbounds->is_object()) {
        errors.Add("omniRelay.outbounds", "must be an object of named outbounds");
      } else {
        for (const auto& [name, value] : outbounds->items()) {
          const std::string path = "omniRelay.outbounds." + name;
          Obj o(value, path, errors);
          OutboundConfig out;
          out.name = name;
          o.String("transport", out.transport);
          out.transport = Lower(out.transport);
          if (out.transport != "grpc" && out.transport != "http") {
            errors.Add(path + ".transport",
                       "unknown transport '" + out.transport + "' (grpc, http)");
          }
          o.String("service", out.service);
          o.String("procedure", out.procedure);
          o.Strings("endpoints", out.endpoints);
          if (const auto* leader = o.Get("leader"); leader != nullptr && !leader->is_null()) {
            Obj l(*leader, path + ".leader", errors);
            LeaderTargetConfig target;
            l.String("scope", target.scope);
            if (target.scope.empty()) errors.Add(path + ".leader.scope", "is required");
            out.leader = target;
            if (!out.endpoints.empty()) {
              errors.Add(path, "'leader' takes its peers from membership: drop 'endpoints'");
            }
          }
          if (const auto* sel = o.Get("mesh"); sel != nullptr && !sel->is_null()) {
            MeshSelectorConfig selector;
            ParseMeshSelector(*sel, path + ".mesh", errors, selector);
            out.mesh = selector;
            if (!out.endpoints.empty()) {
              errors.Add(path, "needs exactly one of 'endpoints' or 'mesh'");
            }
          } else if (out.endpoints.empty() && !out.leader) {
            errors.Add(path + ".endpoints", "needs at least one endpoint (or a 'mesh' selector)");
          }
          for (size_t i = 0; i < out.endpoints.size(); ++i) {
            if (!ValidAddress(StripScheme(out.endpoints[i]))) {
              errors.Add(path + ".endpoints[" + std::to_string(i) + "]",
                         NotHostPort(out.endpoints[i], "a host:port endpoint"));
            }
          }
          o.String("peerChooser", out.peer_chooser);
          if (std::find(choosers.begin(), choosers.end(), out.peer_chooser) == choosers.end()) {
            std::string known;
            for (const auto& c : choosers) known += (known.empty() ? "" : ", ") + c;
            errors.Add(path + ".peerChooser",
                       "unknown chooser '" + out.peer_chooser + "' (known: " + known + ")");
          }
          if (const auto* geo = o.Get("geo"); geo != nullptr && !geo->is_null()) {
            const std::string gpath = path + ".geo";
            GeoRoutingConfig cfg = ParseGeoRouting(*geo, gpath, errors);
            if (out.leader) errors.Add(gpath, "cannot be combined with 'leader'");
            out.geo = cfg;
          }
          o.Int("maxInFlightPerPeer", out.max_in_flight_per_peer);
          o.Int("threads", out.threads, 1);
          ParseCircuitBreaker(o, path, errors, out.circuit_breaker);
          if (const auto* retry = o.Get("retry")) {
            Obj r(*retry, path + ".retry", errors);
            out.retry.enabled = true;
            r.Bool("enabled", out.retry.enabled);
            r.Int("maxAttempts", out.retry.max_attempts, 1);
            r.Dur("initialBackoff", out.retry.initial_backoff);
            r.Dur("maxBackoff", out.retry.max_backoff);
            r.Double("multiplier", out.retry.multiplier, 1);
            r.Double("jitter", out.retry.jitter);
            if (out.retry.jitter > 1) errors.Add(path + ".retry.jitter", "must be within [0, 1]");
            r.Double("budgetRatio", out.retry.budget_ratio);
            r.Double("budgetMax", out.retry.budget_max);
            r.Strings("idempotentProcedures", out.retry.idempotent_procedures);
            r.Bool("retryResourceExhausted", out.retry.retry_resource_exhausted);
          }
          config.outbounds[name] = out;
        }
      }
    }
    if (const auto* routes = top.Get("routes")) {
      if (!routes->is_array()) {
        errors.Add("omniRelay.routes", "must be a list");
      } else {
        for (size_t i = 0; i < routes->size(); ++i) {
          const std::string path = "omniRelay.routes[" + std::to_string(i) + "]";
          Obj r((*routes)[i], path, errors);
          RouteConfig route;
          r.String("prefix", route.prefix);
          r.String("outbound", route.outbound);
          r.String("kind", route.kind);
          r.String("dataPath", route.data_path);
          route.data_path = Lower(route.data_path);
          if (route.data_path != "auto" && route.data_path != "frame" &&
              route.data_path != "grpc") {
            errors.Add(path + ".dataPath",
                       "unknown data path '" + route.data_path + "' (auto, frame, grpc)");
          }
          if (route.outbound.empty()) {
            errors.Add(path + ".outbound", "is required");
          } else if (!config.outbounds.count(route.outbound)) {
            errors.Add(path + ".outbound", "unknown outbound '" + route.outbound + "'");
          }
          if (route.kind != "unary" && route.kind != "oneway" && route.kind != "server-stream" &&
              route.kind != "client-stream" && route.kind != "duplex") {
            errors.Add(path + ".kind",
                       "unknown kind '" + route.kind +
                           "' (unary, oneway, server-stream, client-stream, duplex)");
          }
          config.routes.push_back(route);
        }
      }
    }
    if (const auto* mw = top.Get("middleware")) {
      Obj m(*mw, "omniRelay.middleware", errors);
      m.Strings("inbound", config.middleware.inbound);
      m.Strings("outbound", config.middleware.outbound);
      for (const auto* list : {&config.middleware.inbound, &config.middleware.outbound}) {
        const std::string which = list == &config.middleware.inbound ? "inbound" : "outbound";
        for (size_t i = 0; i < list->size(); ++i) {
          const auto& names = MiddlewareNames();
          if (std::find(names.begin(), names.end(), (*list)[i]) == names.end()) {
            errors.Add("omniRelay.middleware." + which + "[" + std::to_string(i) + "]",
                       "unknown middleware '" + (*list)[i] + "'");
          }
        }
      }
      if (const auto* rl = m.Get("rateLimit")) {
        Obj r(*rl, "omniRelay.middleware.rateLimit", errors);
        RateLimitProfileConfig profile;
        ParseProfile(r, profile);
        if (const auto* bp = r.Get("backpressure")) {
          Obj b(*bp, "omniRelay.middleware.rateLimit.backpressure", errors);
          ParseProfile(b, config.middleware.backpressure);
        }
        config.middleware.rate_limit = profile;
      }
    }
    if (const auto* gateway = top.Get("gateway"); gateway != nullptr && !gateway->is_null()) {
      GatewayConfig gw;
      ParseGateway(*gateway, errors, gw);
      config.gateway = std::move(gw);
    }
    if (const auto* mesh = top.Get("mesh"); mesh != nullptr && !mesh->is_null()) {
      MeshConfig parsed;
      ParseMesh(*mesh, config, errors, parsed);
      config.mesh = std::move(parsed);
    }
    if (const auto* rl = top.Get("resourceLease"); rl != nullptr && !rl->is_null()) {
      ParseResourceLease(*rl, errors, config);
    }
    if (const auto* hub = top.Get("replicationHub"); hub != nullptr && !hub->is_null()) {
      NodeConfig::ReplicationHub h;
      Obj ho(*hub, "omniRelay.replicationHub", errors);
      ho.String("path", h.path);
      if (h.path.empty()) errors.Add("omniRelay.replicationHub.path", "is required");
      config.replication_hub = std::move(h);
    }
    if (const auto* leadership = top.Get("leadership");
        leadership != nullptr && !leadership->is_null()) {
      LeadershipConfig parsed;
      ParseLeadership(*leadership, errors, parsed);
      config.leadership = std::move(parsed);
    }
    if (const auto* shards = top.Get("shards"); shards != nullptr && !shards->is_null()) {
      ShardsConfig parsed;
      ParseShards(*shards, config, errors, parsed);
      config.shards = std::move(parsed);
    }
    if (const auto* bp = top.Get("backpressure"); bp != nullptr && !bp->is_null()) {
      Obj b(*bp, "omniRelay.backpressure", errors);
      b.Bool("propagate", config.backpressure.propagate);
      b.Bool("followMembers", config.backpressure.follow_members);
      b.Dur("retryAfter", config.backpressure.retry_after);
      if (config.backpressure.retry_after <= core::Duration::zero()) {
        errors.Add("omniRelay.backpressure.retryAfter", "must be positive");
      }
      b.Double("shardLowRatio", config.backpressure.shard_low_ratio);
      b.Dur("shardMinHold", config.backpressure.shard_min_hold);
      b.Dur("sampleInterval", config.backpressure.sample_interval);
      b.String("shardThrottle", config.backpressure.shard_throttle);
      if (config.backpressure.shard_throttle != "shard" &&
          config.backpressure.shard_throttle != "none") {
        errors.Add("omniRelay.backpressure.shardThrottle",
                   "unknown mode '" + config.backpressure.shard_throttle + "' (shard, none)");
      }
      if (!(config.backpressure.shard_low_ratio > 0 && config.backpressure.shard_low_ratio < 1)) {
        errors.Add("omniRelay.backpressure.shardLowRatio", "must be between 0 and 1 (exclusive)");
      }
      if (config.backpressure.sample_interval <= core::Duration::zero()) {
        errors.Add("omniRelay.backpressure.sampleInterval", "must be positive");
      }
    }
    if (const auto* echo = top.Get("echo")) {
      Obj e(*echo, "omniRelay.echo", errors);
      config.echo.enabled = true;
      e.Bool("enabled", config.echo.enabled);
      e.String("instance", config.echo.instance);
      e.Int("maxConcurrency", config.echo.max_concurrency);
      e.Dur("latency", config.echo.latency);
      e.Strings("procedures", config.echo.procedures);
      e.String("journal", config.echo.journal);
      for (size_t i = 0; i < config.echo.procedures.size(); ++i) {
        const std::string& name = config.echo.procedures[i];
        const auto slash = name.find('/', name.starts_with("/") ? 1 : 0);
        if (slash == std::string::npos || slash + 1 == name.size()) {
          errors.Add("omniRelay.echo.procedures[" + std::to_string(i) + "]",
                     "'" + name + "' is not service/Method");
        }
      }
    }
  }
  if (config.mesh.has_value() == false) {
    for (const auto& [name, o] : config.outbounds) {
      if (o.mesh) {
        errors.Add("omniRelay.outbounds." + name + ".mesh",
                   "needs an omniRelay.mesh section (membership supplies the peers)");
      }
    }
  }
  for (const auto& [name, o] : config.outbounds) {
    if (o.geo && o.geo->region.empty() && (!config.mesh || config.mesh->identity.region.empty())) {
      errors.Add("omniRelay.outbounds." + name + ".geo.region",
                 "is required (or set omniRelay.mesh.identity.region)");
    }
  }
  for (const auto& [name, o] : config.outbounds) {
    if (o.leader && (!config.mesh || !config.leadership)) {
      errors.Add("omniRelay.outbounds." + name + ".leader",
                 "needs omniRelay.mesh (the leader's endpoint) and omniRelay.leadership (who "
                 "leads)");
    }
  }
  // An https:// url is TLS or an error, never a plaintext listener.
  const std::pair<const char*, const std::optional<InboundConfig>*> inbounds[] = {
      {"grpc", &config.grpc}, {"http", &config.http}};
  for (const auto& [name, inbound] : inbounds) {
    if (*inbound && (*inbound)->https_url && !config.tls) {
      errors.Add(std::string("omniRelay.inbounds.") + name + ".urls",
                 "https:// needs omniRelay.tls (certFile, keyFile)");
    }
  }
  if (!errors.empty()) return errors.ToStatus();
  return config;
}

absl::StatusOr<NodeConfig> Load(const std::string& path, const std::vector<std::string>& sets,
                                bool use_environment) {
  nlohmann::json root = nlohmann::json::object();
  if (!path.empty()) {
    auto loaded = LoadFile(path);
    if (!loaded.ok()) return loaded.status();
    root = std::move(*loaded);
  }
  if (use_environment) {
    if (auto s = ApplyEnvironment(root); !s.ok()) return s;
  }
  if (auto s = ApplySets(root, sets); !s.ok()) return s;
  return Parse(root);
}

nlohmann::json MeshToJson(const MeshConfig& m) {
  auto ms = [](core::Duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  const auto& id = m.identity;
  nlohmann::json gossip = {{"profile", m.gossip.profile}};
  auto put_d = [&](const char* key, const std::optional<core::Duration>& d) {
    if (d) gossip[std::string(key) + "Ms"] = ms(*d);
  };
  auto put_i = [&](const char* key, const std::optional<int>& v) {
    if (v) gossip[key] = *v;
  };
  put_d("probeInterval", m.gossip.probe_interval);
  put_d("probeTimeout", m.gossip.probe_timeout);
  put_i("indirectChecks", m.gossip.indirect_checks);
  put_i("suspicionMult", m.gossip.suspicion_mult);
  put_i("suspicionMaxTimeoutMult", m.gossip.suspicion_max_timeout_mult);
  put_i("retransmitMult", m.gossip.retransmit_mult);
  put_d("gossipInterval", m.gossip.gossip_interval);
  put_i("gossipNodes", m.gossip.gossip_nodes);
  put_d("gossipToTheDead", m.gossip.gossip_to_the_dead);
  put_d("pushPullInterval", m.gossip.push_pull_interval);
  put_d("reconnectInterval", m.gossip.reconnect_interval);
  put_d("deadRetention", m.gossip.dead_retention);
  put_d("sendTimeout", m.gossip.send_timeout);
  return {{"nodeId", id.node_id},
          {"clusterName", id.cluster_name},
          {"roles", id.roles},
          {"region", id.region},
          {"zone", id.zone},
          {"labels", id.labels},
          {"advertiseAddress", id.advertise_address},
          {"advertiseEndpoints", id.advertise_endpoints},
          {"seeds", m.seeds},
          {"peerAddresses", m.peer_addresses},
          {"gossip", gossip}};
}

nlohmann::json ToJson(const NodeConfig& c) {
  auto ms = [](core::Duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  nlohmann::json outbounds = nlohmann::json::object();
  for (const auto& [name, o] : c.outbounds) {
    outbounds[name] = {{"transport", o.transport},
                       {"service", o.service},
                       {"procedure", o.procedure},
                       {"endpoints", o.endpoints},
                       {"peerChooser", o.peer_chooser},
                       {"maxInFlightPerPeer", o.max_in_flight_per_peer},
                       {"circuitBreaker",
                        {{"enabled", o.circuit_breaker.enabled},
                         {"consecutiveFailures", o.circuit_breaker.consecutive_failures},
                         {"openDelayMs", ms(o.circuit_breaker.open_delay)}}},
                       {"retry",
                        {{"enabled", o.retry.enabled},
                         {"maxAttempts", o.retry.max_attempts},
                         {"initialBackoffMs", ms(o.retry.initial_backoff)},
                         {"maxBackoffMs", ms(o.retry.max_backoff)},
                         {"budgetRatio", o.retry.budget_ratio},
                         {"idempotentProcedures", o.retry.idempotent_procedures},
                         {"retryResourceExhausted", o.retry.retry_resource_exhausted}}}};
  }
  nlohmann::json routes = nlohmann::json::array();
  for (const auto& r : c.routes) {
    routes.push_back({{"prefix", r.prefix},
                      {"outbound", r.outbound},
                      {"kind", r.kind},
                      {"dataPath", r.data_path}});
  }
  nlohmann::json inbounds = nlohmann::json::object();
  if (c.grpc) {
    inbounds["grpc"] = {{"address", c.grpc->address},
                        {"threads", c.grpc->threads},
                        {"maxStreams", c.grpc->max_streams}};
  }
  if (c.http) {
    inbounds["http"] = {{"address", c.http->address},
                        {"threads", c.http->threads},
                        {"maxHeaderBytes", c.http->max_header_bytes},
                        {"maxBodyBytes", c.http->max_body_bytes},
                        {"headerTimeoutMs", ms(c.http->header_timeout)},
                        {"bodyTimeoutMs", ms(c.http->body_timeout)}};
  }
  nlohmann::json out = {
      {"service", c.service},
      {"inbounds", inbounds},
      {"admin",
       {{"address", c.admin_address},
        {"tokenFile", c.admin.token_file},
        {"readAccess", c.admin.read_access},
        {"tls", c.admin.tls}}},
      {"principal",
       {{"trustedProxies", c.principal.trusted_proxies},
        {"jwtSecretFile", c.principal.jwt_secret_file}}},
      {"outbounds", outbounds},
      {"routes", routes},
      {"middleware", {{"inbound", c.middleware.inbound}, {"outbound", c.middleware.outbound}}},
      {"echo",
       {{"enabled", c.echo.enabled},
        {"instance", c.echo.instance},
        {"maxConcurrency", c.echo.max_concurrency},
        {"latencyMs", ms(c.echo.latency)},
        {"procedures", c.echo.procedures}}},
      {"drain", {{"timeoutMs", ms(c.drain_timeout)}}}};
  if (c.resource_lease) {
    nlohmann::json namespaces = nlohmann::json::object();
    for (const auto& [name, q] : c.resource_lease->namespaces) {
      namespaces[name] = {
          {"capacity", q.capacity},           {"leaseDurationMs", ms(q.lease_duration)},
          {"maxAttempts", q.max_attempts},    {"highWatermark", q.high_watermark},
          {"lowWatermark", q.low_watermark},  {"retryAfterMs", ms(q.retry_after)},
          {"maxBodyBytes", q.max_body_bytes}, {"completedRetention", q.completed_retention}};
    }
    out["resourceLease"] = {{"maxLeaseWaitMs", ms(c.resource_lease->max_lease_wait)},
                            {"throttleNode", c.resource_lease->throttle_node},
                            {"namespaces", namespaces}};
    if (const auto& r = c.resource_lease->replication) {
      out["resourceLease"]["replication"] = {
          {"kind", r->kind},
          {"path", r->path},
          {"hub", r->hub},
          {"durableAck", r->durable_ack},
          {"shard", r->shard},
          {"table", r->table},
          {"maxBatch", r->max_batch},
          {"maxBuffered", r->max_buffered},
          {"deterministic",
           {{"kind", r->deterministic.kind},
            {"path", r->deterministic.path},
            {"changeId", r->deterministic.change_id},
            {"effectIdFormat", r->deterministic.effect_id_format}}}};
    }
  }
  out["backpressure"] = {{"propagate", c.backpressure.propagate},
                         {"followMembers", c.backpressure.follow_members},
                         {"retryAfterMs", ms(c.backpressure.retry_after)},
                         {"shardLowRatio", c.backpressure.shard_low_ratio},
                         {"shardMinHoldMs", ms(c.backpressure.shard_min_hold)},
                         {"sampleIntervalMs", ms(c.backpressure.sample_interval)},
                         {"shardThrottle", c.backpressure.shard_throttle}};
  if (c.gateway) {
    const auto& g = *c.gateway;
    nlohmann::json clusters = nlohmann::json::object();
    for (const auto& [name, cl] : g.clusters) {
      nlohmann::json j = nlohmann::json::object();
      if (!cl.endpoints.empty()) j["endpoints"] = cl.endpoints;
      j["tls"] = cl.tls;
      j["occupancy"] = cl.occupancy;
      j["maxInFlightPerInstance"] = cl.max_in_flight_per_instance;
      j["circuitBreaker"] = {{"enabled", cl.circuit_breaker.enabled},
                             {"consecutiveFailures", cl.circuit_breaker.consecutive_failures},
                             {"openDelayMs", ms(cl.circuit_breaker.open_delay)}};
      if (!cl.registry.empty()) {
        j["registry"] = (cl.registry_tls ? "https://" : "") + cl.registry;
        j["role"] = cl.role;
        j["refreshIntervalMs"] = ms(cl.refresh_interval);
      }
      clusters[name] = j;
    }
    nlohmann::json groutes = nlohmann::json::array();
    for (const auto& r : g.routes) {
      groutes.push_back({{"prefix", r.prefix},
                         {"cluster", r.cluster},
                         {"authorization", r.authorization},
                         {"balancer", r.balancer},
                         {"stickyHeader", r.sticky_header},
                         {"transferStreams", r.transfer_streams},
                         {"dataPath", r.data_path}});
    }
    nlohmann::json def = nlohmann::json::object();
    if (!g.default_route.cluster.empty()) {
      def["cluster"] = g.default_route.cluster;
    } else {
      def["error"] = g.default_route.error;
    }
    out["gateway"] = {
        {"address", g.address},
        {"jwt", {{"secretFile", g.jwt_secret_file}, {"createIfMissing", g.jwt_create_if_missing}}},
        {"clusters", clusters},
        {"routes", groutes},
        {"defaultRoute", def},
        {"maxAttempts", g.max_attempts},
        {"attemptTimeoutMs", ms(g.attempt_timeout)}};
  }
  if (c.tls) {
    out["tls"] = {{"certFile", c.tls->cert_file},
                  {"keyFile", c.tls->key_file},
                  {"caFile", c.tls->ca_file},
                  {"clientCertificate", c.tls->client_certificate},
                  {"reloadIntervalMs", ms(c.tls->reload_interval)}};
  }
  for (const auto& [name, o] : c.outbounds) {
    if (o.mesh) {
      out["outbounds"][name]["mesh"] = {{"role", o.mesh->role},
                                        {"region", o.mesh->region},
                                        {"zone", o.mesh->zone},
                                        {"labels", o.mesh->labels}};
    }
    if (o.leader) out["outbounds"][name]["leader"] = {{"scope", o.leader->scope}};
    if (o.geo) {
      out["outbounds"][name]["geo"] = {{"region", o.geo->region},
                                       {"latencyThresholdMs", o.geo->latency_threshold_ms},
                                       {"latencySignal", o.geo->latency_signal},
                                       {"failureRateThreshold", o.geo->failure_rate_threshold},
                                       {"minSamples", o.geo->min_samples},
                                       {"holdMs", ms(o.geo->hold)},
                                       {"evaluateEveryMs", ms(o.geo->evaluate_every)},
                                       {"probeEvery", o.geo->probe_every},
                                       {"innerChooser", o.geo->inner_chooser}};
    }
  }
  if (c.mesh) {
    out["mesh"] = MeshToJson(*c.mesh);
  }
  if (c.leadership) {
    out["leadership"] = LeadershipToJson(*c.leadership);
  }
  if (c.shards) {
    out["shards"] = ShardsToJson(*c.shards);
  }
  if (c.middleware.rate_limit) {
    out["middleware"]["rateLimit"] = {
        {"maxConcurrency", c.middleware.rate_limit->max_concurrency},
        {"tokensPerSecond", c.middleware.rate_limit->tokens_per_second},
        {"burst", c.middleware.rate_limit->burst}};
  }
  return {{"omniRelay", out}};
}

}  // namespace omnirelay::config
