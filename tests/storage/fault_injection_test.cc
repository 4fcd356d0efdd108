// FaultInjectionEngine (storage/fault_injection.h): with no fault on, it is
// the wrapped storage (Mem and RocksDB); each fault fails exactly its
// operations with kInternal and writes nothing; the control file switches
// faults on and off while the wrappers are in use.
#include "storage/fault_injection.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/storage/test_util.h"

namespace tessera::storage {
namespace {

using ::tessera::storage::testing::MakeEntry;
using ::tessera::storage::testing::MemEnv;
using ::tessera::storage::testing::RocksEnv;
using ::tessera::storage::testing::TempDir;
using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

constexpr ShardId kShard = 1;

MATCHER_P(Holds, value, "is OK and holds " + ::testing::PrintToString(value)) {
  return arg.ok() && *arg == value;
}

LogUpdate Append(uint64_t index, uint64_t term) {
  LogUpdate u;
  u.shard = kShard;
  u.entries.push_back(MakeEntry(index, term));
  return u;
}

ShardWrite Put(uint64_t applied_index, const std::string& key, const std::string& value) {
  return ShardWrite{kShard, applied_index, {{Mutation::Kind::kPut, key, value}}};
}

// Writes `content` to `path` atomically, as a test controlling a server does.
void WriteControl(const std::string& path, const std::string& content) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << content;
  }
  ASSERT_EQ(std::rename(temp.c_str(), path.c_str()), 0);
}

template <typename Env>
class FaultInjectionTest : public ::testing::Test {
 protected:
  Env env_;
};

using Envs = ::testing::Types<MemEnv, RocksEnv>;
class EnvNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    return T::kName;
  }
};
TYPED_TEST_SUITE(FaultInjectionTest, Envs, EnvNames);

TYPED_TEST(FaultInjectionTest, ForwardsEverythingWhileNoFaultIsOn) {
  FaultInjectionEngine faulty(&this->env_.raft_log(), &this->env_.kv_store());
  ASSERT_THAT(faulty.raft_log().Save({Append(1, 1), Append(2, 1)}), IsOk());
  ASSERT_THAT(faulty.raft_log().Save({Append(3, 2)}, RaftLog::Durability::kBuffered), IsOk());
  absl::StatusOr<LogState> state = faulty.raft_log().State(kShard);
  ASSERT_THAT(state, IsOk());
  EXPECT_EQ(state->last_index, 3u);
  EXPECT_THAT(faulty.raft_log().Term(kShard, 3), Holds(2u));
  absl::StatusOr<std::vector<raftpb::Entry>> entries =
      faulty.raft_log().Entries(kShard, 1, 4, UINT64_MAX);
  ASSERT_THAT(entries, IsOk());
  EXPECT_EQ(entries->size(), 3u);
  ASSERT_THAT(faulty.raft_log().Compact(kShard, 2), IsOk());
  EXPECT_EQ(this->env_.raft_log().State(kShard)->first_index, 3u);

  ASSERT_THAT(faulty.kv_store().Apply({Put(5, "k", "v")}), IsOk());
  EXPECT_THAT(this->env_.kv_store().Get(kShard, "k"), Holds("v"));
  EXPECT_THAT(faulty.kv_store().AppliedIndex(kShard), Holds(5u));
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> snapshot =
      faulty.kv_store().ExportSnapshot(kShard);
  ASSERT_THAT(snapshot, IsOk());
  ShardSnapshotReader reader(snapshot->get());
  ASSERT_THAT(faulty.kv_store().InstallSnapshot(2, 7, reader), IsOk());
  EXPECT_THAT(this->env_.kv_store().Get(2, "k"), Holds("v"));
  absl::StatusOr<ScanResult> scan = faulty.kv_store().Scan(2, {});
  ASSERT_THAT(scan, IsOk());
  EXPECT_EQ(scan->items.size(), 1u);
  ASSERT_THAT(faulty.kv_store().DeleteShard(2), IsOk());
  ASSERT_THAT(faulty.raft_log().DeleteShard(kShard), IsOk());
  for (int op = 0; op < kNumFaultOps; ++op) {
    EXPECT_EQ(faulty.faults().failures(static_cast<FaultOp>(op)), 0u);
  }
}

TYPED_TEST(FaultInjectionTest, SaveFaultFailsEverySaveAndWritesNothing) {
  FaultInjectionEngine faulty(&this->env_.raft_log(), &this->env_.kv_store());
  ASSERT_THAT(faulty.raft_log().Save({Append(1, 1)}), IsOk());
  faulty.faults().Fail(FaultOp::kSave);
  EXPECT_THAT(faulty.raft_log().Save({Append(2, 1)}),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("storage fault \"save\" is on")));
  EXPECT_THAT(faulty.raft_log().Save({Append(2, 1)}, RaftLog::Durability::kBuffered),
              StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(this->env_.raft_log().State(kShard)->last_index, 1u);
  EXPECT_THAT(faulty.raft_log().Save({}), IsOk()) << "an empty save is a no-op";
  // Other operations are untouched.
  EXPECT_THAT(faulty.kv_store().Apply({Put(1, "k", "v")}), IsOk());
  EXPECT_EQ(faulty.faults().failures(FaultOp::kSave), 2u);
  faulty.faults().Heal(FaultOp::kSave);
  EXPECT_THAT(faulty.raft_log().Save({Append(2, 1)}), IsOk());
  EXPECT_EQ(this->env_.raft_log().State(kShard)->last_index, 2u);
}

TYPED_TEST(FaultInjectionTest, SyncFaultFailsSyncedWritesOnly) {
  FaultInjectionEngine faulty(&this->env_.raft_log(), &this->env_.kv_store());
  faulty.faults().Fail(FaultOp::kSync);
  EXPECT_THAT(faulty.raft_log().Save({Append(1, 1)}),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("\"sync\"")));
  EXPECT_THAT(faulty.raft_log().Save({Append(1, 1)}, RaftLog::Durability::kBuffered), IsOk());
  EXPECT_THAT(faulty.kv_store().Apply({Put(1, "k", "v")}), IsOk()) << "Apply is not synced";
  VectorSnapshotReader reader({{false, "a", "b"}});
  EXPECT_THAT(faulty.kv_store().InstallSnapshot(2, 3, reader),
              StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(faulty.kv_store().DeleteShard(kShard), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(faulty.raft_log().DeleteShard(kShard), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(this->env_.kv_store().Get(kShard, "k"), Holds("v"));
  EXPECT_EQ(this->env_.raft_log().State(kShard)->last_index, 1u);
  EXPECT_EQ(faulty.faults().failures(FaultOp::kSync), 4u);
}

TYPED_TEST(FaultInjectionTest, ApplyFaultFailsApplyAndWritesNothing) {
  FaultInjectionEngine faulty(&this->env_.raft_log(), &this->env_.kv_store());
  faulty.faults().Fail(FaultOp::kApply);
  EXPECT_THAT(faulty.kv_store().Apply({Put(4, "k", "v")}),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("\"apply\"")));
  EXPECT_THAT(this->env_.kv_store().Get(kShard, "k"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(this->env_.kv_store().AppliedIndex(kShard), Holds(0u));
  EXPECT_THAT(faulty.raft_log().Save({Append(1, 1)}), IsOk());
  faulty.faults().HealAll();
  EXPECT_THAT(faulty.kv_store().Apply({Put(4, "k", "v")}), IsOk());
}

TYPED_TEST(FaultInjectionTest, InstallFaultFailsInstallAndLeavesTheShard) {
  FaultInjectionEngine faulty(&this->env_.raft_log(), &this->env_.kv_store());
  ASSERT_THAT(faulty.kv_store().Apply({Put(4, "old", "1")}), IsOk());
  faulty.faults().Fail(FaultOp::kInstallSnapshot);
  VectorSnapshotReader reader({{false, "new", "2"}});
  EXPECT_THAT(faulty.kv_store().InstallSnapshot(kShard, 9, reader),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("\"install\"")));
  EXPECT_THAT(this->env_.kv_store().Get(kShard, "old"), Holds("1"));
  EXPECT_THAT(this->env_.kv_store().Get(kShard, "new"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(this->env_.kv_store().AppliedIndex(kShard), Holds(4u));
  EXPECT_THAT(faulty.kv_store().Apply({Put(5, "k", "v")}), IsOk());
}

TYPED_TEST(FaultInjectionTest, CompactFaultFailsCompact) {
  FaultInjectionEngine faulty(&this->env_.raft_log(), &this->env_.kv_store());
  ASSERT_THAT(faulty.raft_log().Save({Append(1, 1), Append(2, 1)}), IsOk());
  faulty.faults().Fail(FaultOp::kCompact);
  EXPECT_THAT(faulty.raft_log().Compact(kShard, 1),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("\"compact\"")));
  EXPECT_EQ(this->env_.raft_log().State(kShard)->first_index, 1u);
}

TEST(FaultInjectionControlFile, SwitchesFaultsOnAndOffWhileInUse) {
  TempDir dir;
  const std::string control = dir.path() + "/faults";
  MemEnv env;
  FaultInjectionEngine faulty(&env.raft_log(), &env.kv_store(), control);
  // The next append / apply after what the stores hold.
  auto save = [&] {
    return faulty.raft_log().Save({Append(env.raft_log().State(kShard)->last_index + 1, 1)});
  };
  auto apply = [&] {
    return faulty.kv_store().Apply({Put(*env.kv_store().AppliedIndex(kShard) + 1, "k", "v")});
  };

  // Absent: nothing fails.
  ASSERT_THAT(save(), IsOk());
  ASSERT_THAT(apply(), IsOk());

  WriteControl(control, "apply\n");
  EXPECT_THAT(apply(),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr(absl::StrCat("\"apply\" is on (control file ", control))));
  EXPECT_THAT(save(), IsOk());

  WriteControl(control, "save, install");
  EXPECT_THAT(save(), StatusIs(absl::StatusCode::kInternal, HasSubstr("\"save\"")));
  VectorSnapshotReader reader({});
  EXPECT_THAT(faulty.kv_store().InstallSnapshot(2, 5, reader),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("\"install\"")));
  EXPECT_THAT(apply(), IsOk());

  // An empty file: everything fails; so does "all".
  WriteControl(control, "");
  EXPECT_THAT(apply(), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(faulty.raft_log().Compact(kShard, 1), StatusIs(absl::StatusCode::kInternal));
  WriteControl(control, "all");
  EXPECT_THAT(save(), StatusIs(absl::StatusCode::kInternal));

  // A typo fails everything, naming the word.
  WriteControl(control, "aply");
  EXPECT_THAT(save(), StatusIs(absl::StatusCode::kInternal, HasSubstr("unknown storage fault "
                                                                      "\"aply\"")));

  // Removed: nothing fails again.
  ASSERT_EQ(std::remove(control.c_str()), 0);
  EXPECT_THAT(save(), IsOk());
  EXPECT_THAT(apply(), IsOk());
  EXPECT_EQ(faulty.faults().failures(FaultOp::kApply), 2u);
  EXPECT_EQ(faulty.faults().failures(FaultOp::kSave), 3u);
}

TEST(FaultInjectionControlFile, ManualSwitchesAddToTheFile) {
  TempDir dir;
  const std::string control = dir.path() + "/faults";
  MemEnv env;
  FaultInjectionEngine faulty(&env.raft_log(), &env.kv_store(), control);
  WriteControl(control, "save");
  faulty.faults().Fail(FaultOp::kApply);
  EXPECT_THAT(faulty.kv_store().Apply({Put(1, "k", "v")}),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("switched on by the test")));
  EXPECT_THAT(faulty.raft_log().Save({Append(1, 1)}), StatusIs(absl::StatusCode::kInternal));
  faulty.faults().HealAll();  // the file's switches stay
  EXPECT_THAT(faulty.kv_store().Apply({Put(1, "k", "v")}), IsOk());
  EXPECT_THAT(faulty.raft_log().Save({Append(1, 1)}), StatusIs(absl::StatusCode::kInternal));
}

TEST(FaultOpNames, RoundTrip) {
  for (int i = 0; i < kNumFaultOps; ++i) {
    const FaultOp op = static_cast<FaultOp>(i);
    EXPECT_EQ(ParseFaultOp(FaultOpName(op)), op);
  }
  EXPECT_EQ(ParseFaultOp("all"), std::nullopt);
  EXPECT_EQ(ParseFaultOp("Save"), std::nullopt);
}

}  // namespace
}  // namespace tessera::storage
