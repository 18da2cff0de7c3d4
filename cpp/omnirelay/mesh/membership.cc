#include "omnirelay/mesh/membership.h"

#include <algorithm>

#include "omnirelay/core/logging.h"
#include "omnirelay/core/request_meta.h"

namespace omnirelay::mesh {

std::string_view MemberEventKindName(MemberEvent::Kind kind) {
  switch (kind) {
    case MemberEvent::Kind::kJoin:
      return "join";
    case MemberEvent::Kind::kAlive:
      return "alive";
    case MemberEvent::Kind::kUpdate:
      return "update";
    case MemberEvent::Kind::kSuspect:
      return "suspect";
    case MemberEvent::Kind::kDead:
      return "dead";
    case MemberEvent::Kind::kLeft:
      return "left";
    case MemberEvent::Kind::kRemoved:
      return "removed";
    case MemberEvent::Kind::kHeartbeat:
      return "heartbeat";
  }
  return "unknown";
}

namespace {
bool Live(MemberState s) { return s == MemberState::kAlive || s == MemberState::kSuspect; }
}  // namespace

std::shared_ptr<Membership> Membership::Create(LocalIdentity self, Options options,
                                               std::shared_ptr<core::Clock> clock,
                                               std::shared_ptr<Transport> transport) {
  return std::shared_ptr<Membership>(
      new Membership(std::move(self), std::move(options), std::move(clock), std::move(transport)));
}

Membership::Membership(LocalIdentity self, Options options, std::shared_ptr<core::Clock> clock,
                       std::shared_ptr<Transport> transport)
    : options_(std::move(options)),
      clock_(std::move(clock)),
      transport_(std::move(transport)),
      self_(std::move(self)),
      rng_(options_.seed ^ std::hash<std::string>{}(self_.id)) {}

Membership::~Membership() { Stop(); }

void Membership::AddListener(Listener listener) {
  std::lock_guard lock(mu_);
  listeners_.push_back(std::move(listener));
}

// -- lifecycle ------------------------------------------------------------------------

void Membership::Start(std::vector<std::string> seeds) {
  {
    std::lock_guard lock(mu_);
    if (running_) return;
    running_ = true;
    leaving_ = false;
    for (auto& s : seeds) {
      if (s != self_.address && std::find(seeds_.begin(), seeds_.end(), s) == seeds_.end()) {
        seeds_.push_back(std::move(s));
      }
    }
    // Spread the first probe over one interval so a cluster started at once
    // does not probe in lock step.
    std::uniform_int_distribution<std::int64_t> jitter(0, options_.probe_interval.count());
    ScheduleProbe(core::Duration(jitter(rng_)));
    ScheduleGossip();
    SchedulePushPull();
    ScheduleReconnect();
    for (const auto& seed : seeds_) SendPushPull("", seed, /*join=*/true);
  }
  Flush();
}

void Membership::Stop() {
  std::lock_guard lock(mu_);
  if (!running_) return;
  running_ = false;
  for (auto id :
       {probe_timer_, probe_timeout_timer_, gossip_timer_, push_pull_timer_, reconnect_timer_}) {
    if (id != 0) clock_->Cancel(id);
  }
  probe_timer_ = probe_timeout_timer_ = gossip_timer_ = push_pull_timer_ = reconnect_timer_ = 0;
  for (auto& [id, entry] : members_) {
    if (entry.suspicion && entry.suspicion->timer != 0) clock_->Cancel(entry.suspicion->timer);
    entry.suspicion.reset();
  }
  outbox_.clear();
}

void Membership::Leave() {
  {
    std::lock_guard lock(mu_);
    if (!running_) return;
    leaving_ = true;
    MemberRecord left{self_.id,           self_.address, self_.meta,
                      MemberState::kLeft, incarnation_,  self_.id};
    // Tell every live member directly: a leave must not wait for gossip to
    // reach everyone, the process is about to exit.
    for (const auto& [id, e] : members_) {
      if (!Live(e.member.record.state)) continue;
      auto m = NewMessage(MessageType::kGossip);
      m->updates.push_back(left);
      Send(id, AddressOf(e), std::move(m));
    }
  }
  Flush();
  Stop();
}

void Membership::SetAdvertiseAddress(const std::string& address) {
  std::lock_guard lock(mu_);
  self_.address = address;
  std::erase(seeds_, address);
}

void Membership::UpdateMeta(MemberMeta meta) {
  {
    std::lock_guard lock(mu_);
    self_.meta = std::move(meta);
    ++incarnation_;
    Enqueue(SelfLocked());
    Changed();
  }
  Flush();
}

MemberRecord Membership::SelfLocked() const {
  return MemberRecord{self_.id, self_.address, self_.meta, MemberState::kAlive, incarnation_, ""};
}

// -- timers ---------------------------------------------------------------------------

void Membership::ScheduleProbe(core::Duration delay) {
  probe_timer_ = clock_->ScheduleAfter(delay, Guard([](Membership& m) { m.OnProbeTick(); }));
}

void Membership::ScheduleGossip() {
  gossip_timer_ = clock_->ScheduleAfter(options_.gossip_interval,
                                        Guard([](Membership& m) { m.OnGossipTick(); }));
}

void Membership::SchedulePushPull() {
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  const auto base = PushPullInterval(options_, LiveCount());
  push_pull_timer_ =
      clock_->ScheduleAfter(std::chrono::duration_cast<core::Duration>(
                                jitter(rng_) * std::chrono::duration<double, std::nano>(base)),
                            Guard([](Membership& m) { m.OnPushPullTick(); }));
}

void Membership::ScheduleReconnect() {
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  reconnect_timer_ = clock_->ScheduleAfter(
      std::chrono::duration_cast<core::Duration>(
          jitter(rng_) * std::chrono::duration<double, std::nano>(options_.reconnect_interval)),
      Guard([](Membership& m) { m.OnReconnectTick(); }));
}

void Membership::OnProbeTick() {
  ScheduleProbe(options_.probe_interval);
  // The previous probe had its whole interval: no ack at all means suspect.
  if (!probe_acked_ && !probe_target_.empty()) {
    stats_.probes_failed.fetch_add(1, std::memory_order_relaxed);
    SuspectLocally(probe_target_);
  }
  probe_acked_ = true;
  probe_target_.clear();
  if (probe_timeout_timer_ != 0) {
    clock_->Cancel(probe_timeout_timer_);
    probe_timeout_timer_ = 0;
  }
  // Next live member in the shuffled round-robin order.
  const MemberEntry* target = nullptr;
  for (std::size_t attempts = 0; attempts <= probe_order_.size() && target == nullptr; ++attempts) {
    if (probe_index_ >= probe_order_.size()) {
      probe_order_.clear();
      for (const auto& [id, e] : members_) {
        if (Live(e.member.record.state)) probe_order_.push_back(id);
      }
      std::sort(probe_order_.begin(), probe_order_.end());  // deterministic base order
      std::shuffle(probe_order_.begin(), probe_order_.end(), rng_);
      probe_index_ = 0;
      if (probe_order_.empty()) return;
    }
    auto it = members_.find(probe_order_[probe_index_++]);
    if (it != members_.end() && Live(it->second.member.record.state)) target = &it->second;
  }
  if (target == nullptr) return;
  probe_seq_ = ++next_seq_;
  probe_target_ = target->member.record.id;
  probe_acked_ = false;
  auto ping = NewMessage(MessageType::kPing);
  ping->seq = probe_seq_;
  ping->target = probe_target_;
  ping->updates = TakeBroadcasts(options_.max_gossip_bytes);
  stats_.probes_sent.fetch_add(1, std::memory_order_relaxed);
  Send(probe_target_, AddressOf(*target), std::move(ping));
  const auto seq = probe_seq_;
  probe_timeout_timer_ = clock_->ScheduleAfter(
      options_.probe_timeout, Guard([seq](Membership& m) { m.OnProbeTimeout(seq); }));
}

void Membership::OnProbeTimeout(std::uint64_t seq) {
  probe_timeout_timer_ = 0;
  if (seq != probe_seq_ || probe_acked_) return;
  auto target = members_.find(probe_target_);
  if (target == members_.end()) return;
  const std::string target_id = probe_target_;
  const std::string target_address = AddressOf(target->second);
  auto helpers = PickRandom(
      static_cast<std::size_t>(std::max(0, options_.indirect_checks)), [&](const MemberEntry& e) {
        return e.member.record.state == MemberState::kAlive && e.member.record.id != target_id;
      });
  for (const auto* helper : helpers) {
    auto req = NewMessage(MessageType::kPingReq);
    req->seq = seq;
    req->target = target_id;
    req->target_address = target_address;
    req->updates = TakeBroadcasts(options_.max_gossip_bytes);
    stats_.indirect_probes.fetch_add(1, std::memory_order_relaxed);
    Send(helper->member.record.id, AddressOf(*helper), std::move(req));
  }
}

void Membership::OnGossipTick() {
  ScheduleGossip();
  // Relays expire here too (cheap, periodic).
  if (!relays_.empty()) {
    const auto now = clock_->Now();
    std::erase_if(relays_, [&](const auto& kv) { return kv.second.expires <= now; });
  }
  if (broadcasts_.empty()) return;
  const auto now = clock_->Now();
  auto targets = PickRandom(static_cast<std::size_t>(options_.gossip_nodes), [&](const auto& e) {
    const auto s = e.member.record.state;
    return Live(s) ||
           (s == MemberState::kDead && now - e.member.state_changed < options_.gossip_to_the_dead);
  });
  for (const auto* t : targets) {
    auto updates = TakeBroadcasts(options_.max_gossip_bytes);
    if (updates.empty()) break;
    auto m = NewMessage(MessageType::kGossip);
    m->updates = std::move(updates);
    Send(t->member.record.id, AddressOf(*t), std::move(m));
  }
}

void Membership::OnPushPullTick() {
  SchedulePushPull();
  Reap();
  auto peers = PickRandom(
      1, [](const MemberEntry& e) { return e.member.record.state == MemberState::kAlive; });
  if (!peers.empty()) {
    SendPushPull(peers.front()->member.record.id, AddressOf(*peers.front()), false);
  }
}

void Membership::OnReconnectTick() {
  ScheduleReconnect();
  if (live_others_ == 0) {
    // Alone (not joined yet, or everyone else is gone): try the seeds again.
    for (const auto& seed : seeds_) SendPushPull("", seed, /*join=*/true);
  }
  auto dead = PickRandom(
      1, [](const MemberEntry& e) { return e.member.record.state == MemberState::kDead; });
  if (!dead.empty()) SendPushPull(dead.front()->member.record.id, AddressOf(*dead.front()), false);
}

void Membership::OnSuspicionTimeout(const std::string& id, std::uint64_t incarnation) {
  auto it = members_.find(id);
  if (it == members_.end()) return;
  auto& e = it->second;
  if (e.member.record.state != MemberState::kSuspect ||
      e.member.record.incarnation != incarnation) {
    return;
  }
  e.suspicion.reset();
  stats_.deaths_declared.fetch_add(1, std::memory_order_relaxed);
  MemberRecord dead = e.member.record;
  dead.state = MemberState::kDead;
  dead.from = self_.id;
  ApplyDead(dead);
}

// -- receiving --------------------------------------------------------------------------

void Membership::HandleMessage(const Message& message) {
  {
    std::lock_guard lock(mu_);
    if (!running_) return;
    stats_.messages_received.fetch_add(1, std::memory_order_relaxed);
    HandleLocked(message);
  }
  Flush();
}

void Membership::Reject(const Message& m, const std::string& reason) {
  stats_.rejects_sent.fetch_add(1, std::memory_order_relaxed);
  core::LogWarn("mesh.reject", {{"from", m.from}, {"address", m.from_address}, {"reason", reason}});
  auto reject = NewMessage(MessageType::kReject);
  reject->reason = reason;
  reject->seq = m.seq;
  if (!m.from_address.empty()) Send("", m.from_address, std::move(reject));
}

void Membership::HandleLocked(const Message& m) {
  if (m.type == MessageType::kReject) {
    // A refusal is accepted from any cluster: it is how we learn we are wrong.
    stats_.rejects_received.fetch_add(1, std::memory_order_relaxed);
    refusal_ = m.reason;
    core::LogError("mesh.join_refused", {{"by", m.from}, {"reason", m.reason}});
    return;
  }
  if (m.cluster != options_.cluster_name) {
    stats_.dropped_cluster.fetch_add(1, std::memory_order_relaxed);
    if (m.type == MessageType::kPushPull || m.type == MessageType::kPing) {
      Reject(m, "cluster name mismatch: node '" + self_.id + "' is in cluster '" +
                    options_.cluster_name + "', the sender '" + m.from + "' in cluster '" +
                    m.cluster + "'");
    }
    return;
  }
  if (m.from.empty() || m.from == self_.id) {
    if (m.from == self_.id && m.from_address != self_.address && !m.from_address.empty()) {
      // Someone else uses our id.
      stats_.conflicts.fetch_add(1, std::memory_order_relaxed);
      if (m.type == MessageType::kPushPull || m.type == MessageType::kPing) {
        Reject(m, "node id collision: '" + m.from + "' is already used by the member at " +
                      self_.address);
      }
    }
    return;  // our own message looped back (a seed list containing ourselves)
  }
  if (m.type == MessageType::kPushPull && m.join) {
    auto it = members_.find(m.from);
    if (it != members_.end() && Live(it->second.member.record.state) &&
        it->second.member.record.address != m.from_address) {
      stats_.conflicts.fetch_add(1, std::memory_order_relaxed);
      Reject(m, "node id collision: '" + m.from + "' is already used by the member at " +
                    it->second.member.record.address);
      return;
    }
  }
  Touch(m.from);
  ApplyUpdates(m.updates);
  switch (m.type) {
    case MessageType::kPing: {
      if (!m.target.empty() && m.target != self_.id) {
        stats_.dropped_misdirected.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      auto ack = NewMessage(MessageType::kAck);
      ack->seq = m.seq;
      ack->target = self_.id;
      ack->updates = TakeBroadcasts(options_.max_gossip_bytes);
      Send(m.from, m.from_address, std::move(ack));
      return;
    }
    case MessageType::kPingReq: {
      const auto seq = ++next_seq_;
      relays_[seq] = Relay{m.from, m.from_address, m.seq, clock_->Now() + options_.probe_interval};
      auto ping = NewMessage(MessageType::kPing);
      ping->seq = seq;
      ping->target = m.target;
      std::string address = m.target_address;
      if (auto it = members_.find(m.target); it != members_.end()) address = AddressOf(it->second);
      Send(m.target, address, std::move(ping));
      return;
    }
    case MessageType::kAck: {
      if (m.seq == probe_seq_ && !probe_acked_ && m.target == probe_target_) {
        probe_acked_ = true;
        Touch(probe_target_);
        if (auto it = members_.find(probe_target_); it != members_.end()) {
          Emit(MemberEvent::Kind::kHeartbeat, it->second.member.record);
        }
        return;
      }
      if (auto relay = relays_.find(m.seq); relay != relays_.end()) {
        auto forward = NewMessage(MessageType::kAck);
        forward->seq = relay->second.requester_seq;
        forward->target = m.target;  // the probed member answered
        Send(relay->second.requester, relay->second.requester_address, std::move(forward));
        relays_.erase(relay);
      }
      return;
    }
    case MessageType::kGossip:
      return;
    case MessageType::kPushPull: {
      MergeState(m.state, m.from);
      auto reply = NewMessage(MessageType::kPushPullReply);
      reply->state = FullState();
      stats_.push_pull_syncs.fetch_add(1, std::memory_order_relaxed);
      Send(m.from, m.from_address, std::move(reply));
      return;
    }
    case MessageType::kPushPullReply:
      MergeState(m.state, m.from);
      stats_.push_pull_syncs.fetch_add(1, std::memory_order_relaxed);
      return;
    case MessageType::kReject:
      return;
  }
}

void Membership::Touch(const std::string& id) {
  if (auto it = members_.find(id); it != members_.end())
    it->second.member.last_seen = clock_->Now();
}

void Membership::ApplyUpdates(const std::vector<MemberRecord>& updates) {
  for (const auto& u : updates) {
    switch (u.state) {
      case MemberState::kAlive:
        ApplyAlive(u);
        break;
      case MemberState::kSuspect:
        ApplySuspect(u);
        break;
      case MemberState::kDead:
      case MemberState::kLeft:
        ApplyDead(u);
        break;
    }
  }
}

void Membership::MergeState(const std::vector<MemberRecord>& state, const std::string& from) {
  for (const auto& r : state) {
    switch (r.state) {
      case MemberState::kAlive:
        ApplyAlive(r);
        break;
      case MemberState::kLeft:
        ApplyDead(r);
        break;
      case MemberState::kSuspect:
      case MemberState::kDead: {
        // A remote "dead" may only mean the remote lost connectivity: treat
        // it as a suspicion, so the member gets its chance to refute.
        MemberRecord suspect = r;
        suspect.state = MemberState::kSuspect;
        suspect.from = from;
        ApplySuspect(suspect);
        break;
      }
    }
  }
}

// -- state transitions (memberlist's aliveNode / suspectNode / deadNode) --------------------

void Membership::Refute(std::uint64_t heard) {
  incarnation_ = std::max(incarnation_, heard) + 1;
  stats_.suspicions_refuted.fetch_add(1, std::memory_order_relaxed);
  Enqueue(SelfLocked());
  Changed();
}

void Membership::ApplyAlive(const MemberRecord& r) {
  if (r.id == self_.id) {
    if (r.address != self_.address && !r.address.empty() && !self_.address.empty()) {
      stats_.conflicts.fetch_add(1, std::memory_order_relaxed);
      core::LogError("mesh.id_conflict", {{"id", r.id}, {"address", r.address}});
      return;
    }
    // Someone believes an older or different version of us: make ours win.
    if (r.incarnation > incarnation_ || (r.incarnation == incarnation_ && r.meta != self_.meta)) {
      Refute(r.incarnation);
    }
    return;
  }
  auto it = members_.find(r.id);
  if (it == members_.end()) {
    MemberEntry entry;
    entry.member.record = r;
    entry.member.record.state = MemberState::kAlive;
    entry.member.record.from.clear();
    entry.member.state_changed = entry.member.last_seen = clock_->Now();
    auto& inserted = members_.emplace(r.id, std::move(entry)).first->second;
    ++live_others_;
    // A newcomer goes to a random place in the probe order (memberlist).
    if (!probe_order_.empty()) {
      std::uniform_int_distribution<std::size_t> at(0, probe_order_.size());
      const auto pos = at(rng_);
      probe_order_.insert(probe_order_.begin() + static_cast<std::ptrdiff_t>(pos), r.id);
      if (pos < probe_index_) ++probe_index_;
    }
    Enqueue(inserted.member.record);
    Emit(MemberEvent::Kind::kJoin, inserted.member.record);
    Changed();
    return;
  }
  auto& e = it->second;
  auto& cur = e.member.record;
  if (cur.address != r.address && Live(cur.state)) {
    // Two live processes claim one id: keep the one we know.
    stats_.conflicts.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (r.incarnation <= cur.incarnation) return;
  const bool revived = cur.state != MemberState::kAlive;
  if (!Live(cur.state)) ++live_others_;
  const bool meta_changed = cur.meta != r.meta || cur.address != r.address;
  cur.incarnation = r.incarnation;
  cur.meta = r.meta;
  cur.address = r.address;
  cur.state = MemberState::kAlive;
  cur.from.clear();
  if (e.suspicion) {
    clock_->Cancel(e.suspicion->timer);
    e.suspicion.reset();
  }
  if (revived) e.member.state_changed = clock_->Now();
  e.member.last_seen = clock_->Now();
  Enqueue(cur);
  if (revived) {
    Emit(MemberEvent::Kind::kAlive, cur);
  } else if (meta_changed) {
    Emit(MemberEvent::Kind::kUpdate, cur);
  }
  Changed();
}

void Membership::ApplySuspect(const MemberRecord& r) {
  if (r.id == self_.id) {
    if (r.incarnation >= incarnation_ && !leaving_) Refute(r.incarnation);
    return;
  }
  auto it = members_.find(r.id);
  if (it == members_.end()) return;
  auto& e = it->second;
  auto& cur = e.member.record;
  if (r.incarnation < cur.incarnation) return;
  if (cur.state == MemberState::kSuspect && e.suspicion && r.incarnation == cur.incarnation) {
    // An independent confirmation shortens the timeout (Lifeguard).
    auto& s = *e.suspicion;
    if (r.from.empty() ||
        std::find(s.confirmers.begin(), s.confirmers.end(), r.from) != s.confirmers.end()) {
      return;
    }
    s.confirmers.push_back(r.from);
    const int confirmations = static_cast<int>(s.confirmers.size()) - 1;
    if (confirmations <= s.expected) {
      const auto timeout = SuspicionTimeout(s.min, s.max, s.expected, confirmations);
      clock_->Cancel(s.timer);
      const auto id = cur.id;
      const auto inc = cur.incarnation;
      s.timer = clock_->ScheduleAt(
          s.start + timeout, Guard([id, inc](Membership& m) { m.OnSuspicionTimeout(id, inc); }));
    }
    Enqueue(r);
    return;
  }
  if (cur.state == MemberState::kDead || cur.state == MemberState::kLeft) return;
  if (cur.state == MemberState::kSuspect && r.incarnation == cur.incarnation) return;
  cur.state = MemberState::kSuspect;
  cur.incarnation = r.incarnation;
  cur.from = r.from;
  e.member.state_changed = clock_->Now();
  const auto n = LiveCount();
  auto s = std::make_unique<Suspicion>();
  s->start = clock_->Now();
  s->min = SuspicionMinTimeout(options_, n);
  s->max = SuspicionMaxTimeout(options_, n);
  s->expected = SuspicionConfirmationsExpected(options_, n);
  s->confirmers.push_back(r.from);
  s->incarnation = r.incarnation;
  const auto timeout = s->expected < 1 ? s->min : s->max;
  const auto id = cur.id;
  const auto inc = cur.incarnation;
  s->timer = clock_->ScheduleAfter(
      timeout, Guard([id, inc](Membership& m) { m.OnSuspicionTimeout(id, inc); }));
  if (e.suspicion) clock_->Cancel(e.suspicion->timer);
  e.suspicion = std::move(s);
  Enqueue(cur);
  Emit(MemberEvent::Kind::kSuspect, cur);
  Changed();
}

void Membership::ApplyDead(const MemberRecord& r) {
  if (r.id == self_.id) {
    if (!leaving_ && r.incarnation >= incarnation_) Refute(r.incarnation);
    return;
  }
  auto it = members_.find(r.id);
  if (it == members_.end()) return;
  auto& e = it->second;
  auto& cur = e.member.record;
  if (r.incarnation < cur.incarnation) return;
  if (cur.state == MemberState::kDead || cur.state == MemberState::kLeft) {
    // "left" is final: upgrade a dead member to left, never the reverse.
    if (cur.state == MemberState::kDead && r.state == MemberState::kLeft) {
      cur.state = MemberState::kLeft;
      cur.incarnation = r.incarnation;
      Emit(MemberEvent::Kind::kLeft, cur);
      Changed();
    }
    return;
  }
  if (e.suspicion) {
    clock_->Cancel(e.suspicion->timer);
    e.suspicion.reset();
  }
  cur.state = r.state == MemberState::kLeft ? MemberState::kLeft : MemberState::kDead;
  --live_others_;
  cur.incarnation = r.incarnation;
  cur.from = r.from;
  e.member.state_changed = clock_->Now();
  Enqueue(cur);
  Emit(cur.state == MemberState::kLeft ? MemberEvent::Kind::kLeft : MemberEvent::Kind::kDead, cur);
  Changed();
}

void Membership::SuspectLocally(const std::string& id) {
  auto it = members_.find(id);
  if (it == members_.end() || !Live(it->second.member.record.state)) return;
  MemberRecord r = it->second.member.record;
  // Already suspect: our failed probe is an independent confirmation
  // (Lifeguard), which shortens the suspicion timeout.
  if (r.state == MemberState::kAlive)
    stats_.suspicions_raised.fetch_add(1, std::memory_order_relaxed);
  r.state = MemberState::kSuspect;
  r.from = self_.id;
  ApplySuspect(r);
}

// -- dissemination ----------------------------------------------------------------------

void Membership::Enqueue(const MemberRecord& record) {
  // A newer statement about a member replaces the older one (memberlist's
  // TransmitLimitedQueue invalidation).
  auto& b = broadcasts_[record.id];
  b.record = record;
  b.transmits = 0;
  b.order = ++broadcast_order_;
}

std::vector<MemberRecord> Membership::TakeBroadcasts(std::size_t budget_bytes) {
  std::vector<MemberRecord> out;
  if (broadcasts_.empty()) return out;
  std::vector<Broadcast*> queue;
  queue.reserve(broadcasts_.size());
  for (auto& [id, b] : broadcasts_) queue.push_back(&b);
  // Fewest transmissions first, then newest.
  std::sort(queue.begin(), queue.end(), [](const Broadcast* a, const Broadcast* b) {
    return a->transmits != b->transmits ? a->transmits < b->transmits : a->order > b->order;
  });
  const int limit = RetransmitLimit(options_, LiveCount());
  std::size_t used = 0;
  std::vector<std::string> done;
  for (auto* b : queue) {
    const auto size = Message::EstimateSize(b->record);
    if (used + size > budget_bytes && !out.empty()) break;
    used += size;
    out.push_back(b->record);
    if (++b->transmits >= limit) done.push_back(b->record.id);
  }
  for (const auto& id : done) broadcasts_.erase(id);
  return out;
}

std::shared_ptr<Message> Membership::NewMessage(MessageType type) {
  auto m = std::make_shared<Message>();
  m->type = type;
  m->cluster = options_.cluster_name;
  m->from = self_.id;
  m->from_address = self_.address;
  return m;
}

void Membership::Send(const std::string& to, const std::string& address,
                      std::shared_ptr<Message> m) {
  if (address.empty()) return;
  stats_.messages_sent.fetch_add(1, std::memory_order_relaxed);
  outbox_.push_back(Outgoing{to, address, std::move(m)});
}

void Membership::SendPushPull(const std::string& to, const std::string& address, bool join) {
  auto m = NewMessage(MessageType::kPushPull);
  m->join = join;
  m->state = FullState();
  Send(to, address, std::move(m));
}

std::vector<MemberRecord> Membership::FullState() const {
  std::vector<MemberRecord> out;
  out.reserve(members_.size() + 1);
  out.push_back(SelfLocked());
  if (leaving_) out.back().state = MemberState::kLeft;
  for (const auto& [id, e] : members_) out.push_back(e.member.record);
  return out;
}

void Membership::Emit(MemberEvent::Kind kind, const MemberRecord& record) {
  if (listeners_.empty()) return;
  events_.push_back(MemberEvent{kind, record});
}

void Membership::Flush() {
  std::lock_guard flush(flush_mu_);
  std::vector<Outgoing> out;
  std::vector<MemberEvent> events;
  std::vector<Listener> listeners;
  {
    std::lock_guard lock(mu_);
    out.swap(outbox_);
    events.swap(events_);
    if (!events.empty()) listeners = listeners_;
  }
  for (auto& o : out) transport_->Send(o.to, o.address, std::move(o.message));
  for (const auto& event : events) {
    for (const auto& listener : listeners) listener(event);
  }
}

void Membership::Reap() {
  const auto now = clock_->Now();
  for (auto it = members_.begin(); it != members_.end();) {
    const auto s = it->second.member.record.state;
    if ((s == MemberState::kDead || s == MemberState::kLeft) &&
        now - it->second.member.state_changed >= options_.dead_retention) {
      Emit(MemberEvent::Kind::kRemoved, it->second.member.record);
      broadcasts_.erase(it->first);
      it = members_.erase(it);
      Changed();
    } else {
      ++it;
    }
  }
}

std::vector<const Membership::MemberEntry*> Membership::PickRandom(
    std::size_t k, const std::function<bool(const MemberEntry&)>& ok) {
  std::vector<const MemberEntry*> out;
  if (k == 0 || members_.empty()) return out;
  // Candidates in a deterministic order (id), then a partial shuffle: the
  // simulator's runs must not depend on hash-map iteration order.
  std::vector<const MemberEntry*> candidates;
  candidates.reserve(members_.size());
  if (members_.size() > 64) {
    // Big tables: sample by random probing of the probe order first.
    for (std::size_t tries = 0; tries < 4 * k && !probe_order_.empty() && out.size() < k; ++tries) {
      std::uniform_int_distribution<std::size_t> pick(0, probe_order_.size() - 1);
      auto it = members_.find(probe_order_[pick(rng_)]);
      if (it == members_.end() || !ok(it->second)) continue;
      if (std::find(out.begin(), out.end(), &it->second) == out.end()) out.push_back(&it->second);
    }
    if (out.size() == k) return out;
    out.clear();
  }
  for (const auto& [id, e] : members_) {
    if (ok(e)) candidates.push_back(&e);
  }
  std::sort(candidates.begin(), candidates.end(), [](const MemberEntry* a, const MemberEntry* b) {
    return a->member.record.id < b->member.record.id;
  });
  for (std::size_t i = 0; i < candidates.size() && i < k; ++i) {
    std::uniform_int_distribution<std::size_t> pick(i, candidates.size() - 1);
    std::swap(candidates[i], candidates[pick(rng_)]);
    out.push_back(candidates[i]);
  }
  return out;
}

std::size_t Membership::LiveCount() const { return live_others_ + 1; }

// -- views ------------------------------------------------------------------------------

void Membership::Seed(const std::vector<MemberRecord>& records) {
  {
    std::lock_guard lock(mu_);
    for (const auto& r : records) {
      if (r.id == self_.id || members_.count(r.id) != 0) continue;
      if (Live(r.state)) ++live_others_;
      MemberEntry entry;
      entry.member.record = r;
      entry.member.state_changed = entry.member.last_seen = clock_->Now();
      members_[r.id] = std::move(entry);
    }
    Changed();
  }
}

std::vector<Member> Membership::Members() const {
  std::lock_guard lock(mu_);
  std::vector<Member> out;
  out.reserve(members_.size() + 1);
  Member self;
  self.record = SelfLocked();
  if (leaving_) self.record.state = MemberState::kLeft;
  self.state_changed = self.last_seen = clock_->Now();
  out.push_back(std::move(self));
  for (const auto& [id, e] : members_) out.push_back(e.member);
  std::sort(out.begin(), out.end(),
            [](const Member& a, const Member& b) { return a.record.id < b.record.id; });
  return out;
}

std::optional<Member> Membership::Find(const std::string& id) const {
  std::lock_guard lock(mu_);
  if (id == self_.id) {
    Member self;
    self.record = SelfLocked();
    return self;
  }
  auto it = members_.find(id);
  if (it == members_.end()) return std::nullopt;
  return it->second.member;
}

MemberRecord Membership::SelfRecord() const {
  std::lock_guard lock(mu_);
  return SelfLocked();
}

std::uint64_t Membership::incarnation() const {
  std::lock_guard lock(mu_);
  return incarnation_;
}

std::size_t Membership::NumAlive() const {
  std::lock_guard lock(mu_);
  return LiveCount();
}

std::string Membership::refusal() const {
  std::lock_guard lock(mu_);
  return refusal_;
}

nlohmann::json Membership::MemberToJson(const Member& m) {
  const auto& r = m.record;
  return {{"id", r.id},
          {"address", r.address},
          {"roles", r.meta.roles},
          {"region", r.meta.region},
          {"zone", r.meta.zone},
          {"labels", r.meta.labels},
          {"endpoints", r.meta.endpoints},
          {"state", std::string(MemberStateName(r.state))},
          {"incarnation", r.incarnation},
          {"lastSeen", core::FormatTimestamp(m.last_seen)},
          {"stateChanged", core::FormatTimestamp(m.state_changed)}};
}

nlohmann::json Membership::ToJson() const {
  auto members = Members();
  nlohmann::json list = nlohmann::json::array();
  std::map<std::string, int> counts;
  for (const auto& m : members) {
    list.push_back(MemberToJson(m));
    ++counts[std::string(MemberStateName(m.record.state))];
  }
  const auto self = SelfRecord();
  return {{"self", {{"id", self.id}, {"address", self.address}, {"incarnation", self.incarnation}}},
          {"cluster", options_.cluster_name},
          {"counts", counts},
          {"refusal", refusal()},
          {"members", list}};
}

}  // namespace omnirelay::mesh
