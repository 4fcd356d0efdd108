// Runs the tessera-check binary on small history files: exit codes and output.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace {

using ::testing::HasSubstr;

struct CliResult {
  int exit_code;
  std::string output;
};

std::string WriteFile(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

CliResult Check(const std::string& args) {
  std::string out_path = ::testing::TempDir() + "/check_cli_out.txt";
  std::string cmd = std::string(TESSERA_CHECK_BINARY) + " " + args + " >" + out_path + " 2>&1";
  int status = std::system(cmd.c_str());
  std::ifstream in(out_path);
  std::ostringstream s;
  s << in.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, s.str()};
}

constexpr char kGood[] =
    "invoke id=1 p=0 t=0 f=put k=x v=a\n"
    "ok id=1 t=10\n"
    "invoke id=2 p=1 t=20 f=get k=x\n"
    "ok id=2 t=30 v=a\n"
    "invoke id=3 p=1 t=40 f=txn_read ks=b0,b1\n"
    "ok id=3 t=50 vs=5,5\n"
    "bank total=10 ks=b0,b1\n";

TEST(TesseraCheck, OkHistoryExitsZero) {
  std::string h = WriteFile("good.txt", kGood);
  std::string f = WriteFile("good_final.txt", "final k=x v=a\n");
  CliResult r = Check(h + " --final " + f);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("3 ops (ok 3, fail 0, unknown 0"));
  EXPECT_THAT(r.output, HasSubstr("linearizability: ok"));
  EXPECT_THAT(r.output, HasSubstr("durability: ok"));
  EXPECT_THAT(r.output, HasSubstr("bank: ok"));
  EXPECT_THAT(r.output, HasSubstr("result: OK"));
}

TEST(TesseraCheck, ViolationExitsOne) {
  std::string h = WriteFile("stale.txt",
                            "invoke id=1 p=0 t=0 f=put k=x v=a\nok id=1 t=10\n"
                            "invoke id=2 p=0 t=20 f=put k=x v=b\nok id=2 t=30\n"
                            "invoke id=3 p=1 t=40 f=get k=x\nok id=3 t=50 v=a\n"
                            "final k=x v=a\n");
  CliResult r = Check(h);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("linearizability: VIOLATION"));
  EXPECT_THAT(r.output, HasSubstr("cannot place #3"));
  EXPECT_THAT(r.output, HasSubstr("durability: VIOLATION"));
  EXPECT_THAT(r.output, HasSubstr("result: VIOLATION"));
}

TEST(TesseraCheck, BadInputExitsTwo) {
  EXPECT_EQ(Check("").exit_code, 2);
  EXPECT_EQ(Check("/nonexistent/history.txt").exit_code, 2);
  EXPECT_EQ(Check("--bogus x").exit_code, 2);
  std::string h = WriteFile("bad.txt", "ok id=9 t=1\n");
  CliResult r = Check(h);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("line 1"));
}

TEST(TesseraCheck, BudgetExceededExitsTwo) {
  std::string text;
  for (int i = 1; i <= 20; ++i) {
    text += "invoke id=" + std::to_string(i) + " p=" + std::to_string(i) + " t=0 f=put k=x v=v" +
            std::to_string(i) + "\nok id=" + std::to_string(i) + " t=100\n";
  }
  text += "invoke id=97 p=0 t=50 f=get k=x\nok id=97 t=60 v=v1\n";
  text += "invoke id=98 p=0 t=70 f=get k=x\nok id=98 t=80 v=v2\n";
  text += "invoke id=99 p=0 t=90 f=get k=x\nok id=99 t=95 v=v1\n";
  std::string h = WriteFile("budget.txt", text);
  CliResult r = Check(h + " --max-states 100");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("budget exceeded"));
  EXPECT_THAT(r.output, HasSubstr("result: UNKNOWN"));
}

}  // namespace
