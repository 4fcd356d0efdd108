// tessera-watch-bench: many watchers on one node under a put load.
//
//   tessera-watch-bench --endpoints=A,B,C --node=A --watchers=10000 --duration=30s
//
// Opens --streams KV.Watch streams to --node carrying --watchers watches,
// each on its own key ("w" + index, the key's shard from the cluster map),
// then runs --put-clients closed-loop put clients (the SDK, every node) on
// random watched keys for --duration. Each value starts with its send time
// (ns since the epoch, this machine's clock), so each event's latency is
// receipt time minus send time. Prints puts/s, events received, event
// latency percentiles, and (with --pid, the watched node's process id) its
// RSS before and after; with --watchers=0, the put throughput alone (the
// baseline for the watchers' cost). Exit 1 if an acknowledged put's event
// did not arrive within 10 s of the end.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/bench/histogram.h"
#include "client/client.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/key_hash.h"
#include "tessera/kv.grpc.pb.h"

namespace tessera::bench {
namespace {

struct Config {
  std::vector<std::string> endpoints = {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"};
  std::string node;
  int watchers = 10000;
  int streams = 8;
  int put_clients = 16;
  int value_size = 100;
  absl::Duration duration = absl::Seconds(30);
  int pid = 0;
};

std::string Key(int i) { return absl::StrCat("w", i); }

uint64_t RssKiB(int pid) {
  if (pid == 0) return 0;
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(in, line);) {
    uint64_t kib = 0;
    if (line.rfind("VmRSS:", 0) == 0 &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &kib)) {
      return kib;
    }
  }
  return 0;
}

// The shard of `key` in `map` (by hash range).
uint32_t ShardOf(const v1::ClusterMap& map, const std::string& key) {
  const uint64_t hash = KeyHash(key);
  for (const v1::ShardInfo& s : map.shards()) {
    if (hash >= s.hash_start() && hash <= s.hash_end()) return s.id();
  }
  return 0;
}

class Streams {
 public:
  Streams(const Config& config, const v1::ClusterMap& map,
          std::shared_ptr<grpc::ChannelCredentials> credentials) {
    auto channel = grpc::CreateChannel(config.node, std::move(credentials));
    stub_ = v1::KV::NewStub(channel);
    for (int s = 0; s < config.streams; ++s) {
      auto stream = std::make_unique<Stream>();
      stream->stream = stub_->Watch(&stream->context);
      streams_.push_back(std::move(stream));
    }
    for (int i = 0; i < config.watchers; ++i) {
      v1::WatchRequest request;
      v1::WatchCreate* create = request.mutable_create();
      create->set_watch_id(static_cast<uint64_t>(i) + 1);
      const uint32_t shard = ShardOf(map, Key(i));
      create->mutable_header()->set_shard(shard);
      create->mutable_header()->set_range_version(
          std::max<uint64_t>(map.shards(static_cast<int>(shard)).range_version(), 1));
      create->set_key(Key(i));
      streams_[static_cast<size_t>(i % config.streams)]->stream->Write(request);
    }
    for (auto& s : streams_) {
      Stream* raw = s.get();
      readers_.emplace_back([this, raw] { Read(raw); });
    }
  }
  ~Streams() {
    for (auto& s : streams_) s->context.TryCancel();
    for (std::thread& t : readers_) t.join();
  }

  uint64_t created() const { return created_.load(); }
  uint64_t events() const { return events_.load(); }
  uint64_t canceled() const { return canceled_.load(); }
  LatencyHistogram latencies() const {
    LatencyHistogram out;
    absl::MutexLock lock(&mu_);
    out.Merge(latencies_);
    return out;
  }

 private:
  struct Stream {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::WatchRequest, v1::WatchResponse>> stream;
  };

  void Read(Stream* s) {
    v1::WatchResponse response;
    auto mine = std::make_unique<LatencyHistogram>();
    while (s->stream->Read(&response)) {
      if (response.created()) ++created_;
      if (response.canceled()) ++canceled_;
      const uint64_t now = static_cast<uint64_t>(absl::GetCurrentTimeNanos());
      for (const v1::Event& e : response.events()) {
        uint64_t sent = 0;
        if (!absl::SimpleAtoi(e.kv().value().substr(0, 19), &sent)) continue;
        mine->Record(now > sent ? now - sent : 0);
        ++events_;
      }
      if (mine->count() >= 1000) {
        absl::MutexLock lock(&mu_);
        latencies_.Merge(*mine);
        mine = std::make_unique<LatencyHistogram>();
      }
    }
    absl::MutexLock lock(&mu_);
    latencies_.Merge(*mine);
  }

  std::unique_ptr<v1::KV::Stub> stub_;
  std::vector<std::unique_ptr<Stream>> streams_;
  std::vector<std::thread> readers_;
  std::atomic<uint64_t> created_{0}, events_{0}, canceled_{0};
  mutable absl::Mutex mu_;
  LatencyHistogram latencies_ ABSL_GUARDED_BY(mu_);
};

int Main(int argc, char** argv) {
  Config config;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq),
                      value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    bool ok = true;
    if (name == "--endpoints") {
      config.endpoints = absl::StrSplit(value, ',', absl::SkipEmpty());
    } else if (name == "--node") {
      config.node = value;
    } else if (name == "--watchers") {
      ok = absl::SimpleAtoi(value, &config.watchers) && config.watchers >= 0;
    } else if (name == "--streams") {
      ok = absl::SimpleAtoi(value, &config.streams) && config.streams >= 1;
    } else if (name == "--put-clients") {
      ok = absl::SimpleAtoi(value, &config.put_clients) && config.put_clients >= 1;
    } else if (name == "--value-size") {
      ok = absl::SimpleAtoi(value, &config.value_size) && config.value_size >= 20;
    } else if (name == "--duration") {
      ok = absl::ParseDuration(value, &config.duration);
    } else if (name == "--pid") {
      ok = absl::SimpleAtoi(value, &config.pid);
    } else {
      std::fprintf(stderr,
                   "usage: tessera-watch-bench [--endpoints=A,B,C] [--node=A] [--watchers=N] "
                   "[--streams=S] [--put-clients=C] [--value-size=B] [--duration=D] [--pid=P]\n");
      return 2;
    }
    if (!ok) {
      std::fprintf(stderr, "tessera-watch-bench: bad value for %s\n", name.c_str());
      return 2;
    }
  }
  if (config.node.empty()) config.node = config.endpoints[0];
  client::ClientOptions options;
  options.tls = client::TlsOptionsFromEnv();  // TESSERA_TLS_CA, _CERT, _KEY
  options.endpoints = config.endpoints;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      client::ChannelCredentials(options.tls);
  absl::StatusOr<std::unique_ptr<client::Client>> client = client::Client::Create(options);
  if (!credentials.ok()) client = credentials.status();
  if (!client.ok()) {
    std::fprintf(stderr, "tessera-watch-bench: %s\n", client.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<v1::ClusterMap> map = (*client)->GetClusterMap();
  if (!map.ok()) {
    std::fprintf(stderr, "tessera-watch-bench: %s\n", map.status().ToString().c_str());
    return 2;
  }
  const uint64_t rss_before = RssKiB(config.pid);
  std::unique_ptr<Streams> streams;
  const int keys = std::max(config.watchers, 10000);
  if (config.watchers > 0) {
    const absl::Time t0 = absl::Now();
    streams = std::make_unique<Streams>(config, *map, *credentials);
    const absl::Time until = absl::Now() + absl::Seconds(120);
    while (streams->created() < static_cast<uint64_t>(config.watchers) && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(10));  // polls a counter, bounded
    }
    std::printf("watchers: %llu of %d created in %.2f s on %s\n",
                static_cast<unsigned long long>(streams->created()), config.watchers,
                absl::ToDoubleSeconds(absl::Now() - t0), config.node.c_str());
  }
  const uint64_t rss_idle = RssKiB(config.pid);

  std::atomic<uint64_t> acked{0}, failed{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> putters;
  const absl::Time start = absl::Now();
  for (int c = 0; c < config.put_clients; ++c) {
    putters.emplace_back([&, c] {
      absl::BitGen rng;
      (void)c;
      while (!stop.load()) {
        const int k = absl::Uniform(rng, 0, config.watchers > 0 ? config.watchers : keys);
        std::string value = absl::StrCat(absl::GetCurrentTimeNanos());
        value.resize(static_cast<size_t>(config.value_size), 'v');
        if ((*client)->Put(Key(k), value).ok()) {
          ++acked;
        } else {
          ++failed;
        }
      }
    });
  }
  absl::SleepFor(config.duration);  // the measured window
  stop = true;
  for (std::thread& t : putters) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const uint64_t rss_load = RssKiB(config.pid);
  std::printf("puts: %llu acknowledged (%.0f/s), %llu failed, %d clients, %.1f s\n",
              static_cast<unsigned long long>(acked.load()), acked.load() / seconds,
              static_cast<unsigned long long>(failed.load()), config.put_clients, seconds);
  int rc = 0;
  if (streams != nullptr) {
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (streams->events() < acked.load() && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(10));  // polls a counter, bounded
    }
    const LatencyHistogram h = streams->latencies();
    auto ms = [](uint64_t nanos) { return static_cast<double>(nanos) / 1e6; };
    std::printf(
        "events: %llu received (%llu watches cut off); latency ms p50 %.2f p99 %.2f p999 %.2f "
        "max %.2f\n",
        static_cast<unsigned long long>(streams->events()),
        static_cast<unsigned long long>(streams->canceled()), ms(h.Percentile(50)),
        ms(h.Percentile(99)), ms(h.Percentile(99.9)), ms(h.max_nanos()));
    if (streams->events() < acked.load()) {
      std::printf("MISSING: %llu acknowledged puts without an event\n",
                  static_cast<unsigned long long>(acked.load() - streams->events()));
      rc = 1;
    }
  }
  if (config.pid != 0) {
    std::printf("node RSS: %.1f MiB before, %.1f MiB with the watchers, %.1f MiB after the load\n",
                rss_before / 1024.0, rss_idle / 1024.0, rss_load / 1024.0);
  }
  return rc;
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) { return tessera::bench::Main(argc, argv); }
