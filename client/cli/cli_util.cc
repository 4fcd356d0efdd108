#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "client/cli/cli.h"

namespace tessera::client::cli {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += absl::StrFormat("\\u%04x", c);
    }
  }
  return out + "\"";
}

// One-line text of an error, without the status code dump.
std::string OneLine(const absl::Status& s) {
  std::string what;
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
      what = "cluster unavailable: ";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      what = "timed out: ";
      break;
    case absl::StatusCode::kInvalidArgument:
      what = "invalid argument: ";
      break;
    case absl::StatusCode::kFailedPrecondition:
      what = "failed precondition: ";
      break;
    default:
      break;
  }
  std::string msg = absl::StrReplaceAll(s.message(), {{"\n", " "}, {"\r", " "}});
  if (msg.empty()) msg = absl::StatusCodeToString(s.code());
  return what + msg;
}

// Prints the error (with `note` after it) and returns its exit code.
namespace {
bool tls_configured = false;
}  // namespace

void NoteTlsConfigured(bool tls) { tls_configured = tls; }

int Fail(const std::string& command, const absl::Status& s, const std::string& note) {
  std::string hint;
  // What a connection that never got past TLS looks like from here.
  if (absl::StrContains(s.message(), "andshake failed")) {
    hint = " (TLS: is --tls-ca the CA that signed the cluster's certificates?)";
  } else if (absl::StrContains(s.message(), "Socket closed")) {
    hint = tls_configured ? " (TLS: the server may refuse --tls-cert: is it signed by the "
                            "cluster's CA and still valid?)"
                          : " (if the cluster speaks TLS, set --tls-ca or TESSERA_TLS_CA)";
  }
  std::fprintf(stderr, "tessera: %s: %s%s%s\n", command.c_str(), OneLine(s).c_str(), note.c_str(),
               hint.c_str());
  switch (s.code()) {
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAborted:
      return kExitNotFound;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return kExitUnavailable;
    default:
      return kExitError;
  }
}

void WriteRaw(const std::string& bytes) { std::fwrite(bytes.data(), 1, bytes.size(), stdout); }

}  // namespace tessera::client::cli
