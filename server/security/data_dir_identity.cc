#include "server/security/data_dir_identity.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tessera::server::security {
namespace {

constexpr char kHeader[] = "tessera-data-dir 1";

absl::Status Errno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

absl::StatusOr<DataDirIdentity> Parse(const std::string& path, const std::string& text) {
  DataDirIdentity id;
  bool header = false;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    line = absl::StripAsciiWhitespace(line);
    if (line == kHeader) {
      header = true;
    } else if (absl::ConsumePrefix(&line, "cluster_id=")) {
      if (!absl::SimpleAtoi(line, &id.cluster_id)) id.cluster_id = 0;
    } else if (absl::ConsumePrefix(&line, "node_id=")) {
      if (!absl::SimpleAtoi(line, &id.node_id)) id.node_id = 0;
    } else if (absl::ConsumePrefix(&line, "incarnation=")) {
      if (!absl::SimpleAtoi(line, &id.incarnation)) id.incarnation = 0;
    }
  }
  if (!header || id.cluster_id == 0 || id.node_id == 0 || id.incarnation == 0) {
    return absl::DataLossError(absl::StrCat(path, " is malformed (expected '", kHeader,
                                            "', cluster_id=, node_id= and incarnation= lines)"));
  }
  return id;
}

}  // namespace

absl::Status WriteFileDurably(const std::string& path, const std::string& content) {
  const std::string temp = path + ".tmp";
  int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno(absl::StrCat("cannot create ", temp));
  size_t written = 0;
  while (written < content.size()) {
    ssize_t n = write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status s = Errno(absl::StrCat("cannot write ", temp));
      close(fd);
      return s;
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    absl::Status s = Errno(absl::StrCat("cannot fsync ", temp));
    close(fd);
    return s;
  }
  close(fd);
  if (rename(temp.c_str(), path.c_str()) != 0) {
    return Errno(absl::StrCat("cannot rename ", temp, " to ", path));
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return Errno(absl::StrCat("cannot open ", dir));
  const bool synced = fsync(dir_fd) == 0;
  absl::Status s = synced ? absl::OkStatus() : Errno(absl::StrCat("cannot fsync ", dir));
  close(dir_fd);
  return s;
}

absl::StatusOr<DataDirIdentity> LoadOrCreateIdentity(const std::string& dir, uint64_t cluster_id,
                                                     uint64_t node_id) {
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Errno(absl::StrCat("cannot create the data directory ", dir));
  }
  const std::string path = absl::StrCat(dir, "/", kIdentityFileName);
  std::ifstream in(path);
  if (in) {
    std::ostringstream text;
    text << in.rdbuf();
    absl::StatusOr<DataDirIdentity> id = Parse(path, text.str());
    if (!id.ok()) return id.status();
    if (id->cluster_id != cluster_id) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data directory ", dir, " belongs to another cluster (cluster id ", id->cluster_id,
          ", this --initial-cluster is ", cluster_id,
          "): its raft logs and terms are not this cluster's; give this node a new directory"));
    }
    if (id->node_id != node_id) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data directory ", dir, " belongs to node ", id->node_id, ", not to node ", node_id,
          " (a copied directory would inherit that node's votes); give each node its own"));
    }
    return id;
  }
  DataDirIdentity id{.cluster_id = cluster_id, .node_id = node_id, .created = true};
  std::random_device random;
  while (id.incarnation == 0) {
    id.incarnation = (static_cast<uint64_t>(random()) << 32) ^ random();
  }
  absl::Status written = WriteFileDurably(
      path, absl::StrCat(kHeader, "\ncluster_id=", cluster_id, "\nnode_id=", node_id,
                         "\nincarnation=", id.incarnation, "\n"));
  if (!written.ok()) return written;
  return id;
}

absl::StatusOr<std::optional<uint64_t>> LoadReplacement(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/", kReplacementFileName);
  std::ifstream in(path);
  if (!in) return std::optional<uint64_t>();
  std::ostringstream text;
  text << in.rdbuf();
  absl::string_view line = absl::StripAsciiWhitespace(text.str());
  uint64_t version = 0;
  if (!absl::ConsumePrefix(&line, "replaced_at_map_version=") ||
      !absl::SimpleAtoi(line, &version)) {
    return absl::DataLossError(
        absl::StrCat(path, " is malformed (expected 'replaced_at_map_version=<version>')"));
  }
  return std::optional<uint64_t>(version);
}

absl::Status SaveReplacement(const std::string& dir, uint64_t map_version) {
  return WriteFileDurably(absl::StrCat(dir, "/", kReplacementFileName),
                          absl::StrCat("replaced_at_map_version=", map_version, "\n"));
}

}  // namespace tessera::server::security
