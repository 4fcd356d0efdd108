// TLS settings of a client of the client port: the SDK, the CLI, the bench
// tools and tessera-admin build their channel credentials here.
//
// With a CA file the client speaks TLS and verifies the server's certificate
// against it (and against the host it dials: the certificate must name it);
// with a certificate and key as well, it presents them (mutual TLS: the
// certificate's common name is the user, server/README.md "Security").
#ifndef TESSERA_CLIENT_TLS_H_
#define TESSERA_CLIENT_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"

namespace tessera::client {

struct TlsOptions {
  std::string ca_file;    // PEM CA certificate(s); empty: plaintext
  std::string cert_file;  // PEM client certificate; empty: none presented
  std::string key_file;   // PEM private key of cert_file
  bool enabled() const { return !ca_file.empty(); }
};

// The environment variables the CLI and the tools read their defaults from
// (deploy/local-cluster.sh up --tls writes them to a file to source).
inline constexpr char kTlsCaEnv[] = "TESSERA_TLS_CA";
inline constexpr char kTlsCertEnv[] = "TESSERA_TLS_CERT";
inline constexpr char kTlsKeyEnv[] = "TESSERA_TLS_KEY";

// TESSERA_TLS_CA, TESSERA_TLS_CERT and TESSERA_TLS_KEY (unset: empty).
TlsOptions TlsOptionsFromEnv();

// Reads the files: plaintext credentials without a CA file.
// kInvalidArgument (one line naming the file) when a file cannot be read,
// holds no PEM block, or only one of cert_file and key_file is set.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const TlsOptions& tls);

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_TLS_H_
