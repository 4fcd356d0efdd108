// TLS: the credentials of both ports, built from certificate files that are
// watched and reloaded without a restart, and the identities a verified
// certificate names.
//
// Where it sits: tessera-server loads one TlsCredentials for the peer port
// (--peer-cert, --peer-key, --peer-ca; or --insecure-peers) and one for the
// client port (--tls-cert, --tls-key, --tls-ca; or none: plaintext). The
// gRPC servers use server(), the transport's channels to other members and
// the node's own calls to other nodes' client ports use channel(), and the
// services ask CertifiedPeerId() / CertifiedName() of a call.
//
// Certificates: a member's certificate has the common name "node-<id>" and
// the DNS subject alternative name "node-<id>", is signed by the cluster CA,
// and (for the client port) also names the hosts clients dial;
// deploy/gen-certs.sh makes them. The peer port requires and verifies a
// client certificate from the CA; the dialling member checks that the
// server's certificate names the member it dials (target name override),
// whatever the address. The client port verifies a client certificate if
// one is presented (a user who signs in with a password presents none).
//
// Rotation: gRPC re-reads the three files every kReloadSeconds and uses new
// contents for new handshakes (connections already open keep theirs). Replace
// files by renaming new ones into place, key first. Recheck() (tessera-server
// calls it on SIGHUP) checks the files now in place and says what is wrong.
//
// Copies share the watcher; thread-safe.
#ifndef TESSERA_SERVER_SECURITY_TLS_H_
#define TESSERA_SERVER_SECURITY_TLS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/support/channel_arguments.h"

namespace tessera::server::security {

struct TlsFiles {
  std::string cert;  // PEM certificate of this member ("node-<id>")
  std::string key;   // PEM private key of that certificate
  std::string ca;    // PEM certificate(s) of the CA that signs the other end
};

// What a TLS server asks of the client's certificate.
enum class ClientCertificates {
  kRequired,  // none, or one the CA did not sign: no connection (peer port)
  kOptional,  // none is fine; one the CA did not sign: no connection (client port)
};

// "node-<id>": the common name and DNS name of member `id`'s certificate.
std::string MemberCertName(uint64_t id);

class TlsCredentials {
 public:
  // How often gRPC re-reads the files.
  static constexpr unsigned kReloadSeconds = 1;

  // Plaintext: anyone who reaches the port can be anyone. For tests of other
  // things and closed networks.
  static TlsCredentials Insecure();
  // Reads and checks the files: each parses, the key matches the
  // certificate, the certificate is signed by the CA, is currently valid and
  // names member `self`; then watches them. `flags` ("--peer" or "--tls")
  // names them in errors: kInvalidArgument with a one-line reason.
  static absl::StatusOr<TlsCredentials> Load(const TlsFiles& files, uint64_t self,
                                             absl::string_view flags = "--peer");

  bool secure() const { return provider_ != nullptr; }
  std::shared_ptr<grpc::ServerCredentials> server(
      ClientCertificates client = ClientCertificates::kRequired) const;
  // Presents this member's certificate and verifies the server's against the
  // CA and the target name.
  std::shared_ptr<grpc::ChannelCredentials> channel() const;
  // Sets what a channel to member `id`'s peer port needs (with TLS: the name
  // its certificate must carry).
  void ConfigureChannelTo(uint64_t id, grpc::ChannelArguments* args) const;
  // Checks the files now in place as Load() does (OK when insecure).
  absl::Status Recheck() const;

 private:
  TlsFiles files_;
  std::string flags_;
  uint64_t self_ = 0;
  std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider_;
};

// The member id certified by the peer of a call: the "node-<id>" common name
// of its verified client certificate. kUnauthenticated when the call carries
// no verified certificate or the name is not of that form.
absl::StatusOr<uint64_t> CertifiedPeerId(const grpc::AuthContext& context);

// The common name of the verified client certificate of a call; nullopt
// without one.
std::optional<std::string> CertifiedName(const grpc::AuthContext& context);

}  // namespace tessera::server::security

#endif  // TESSERA_SERVER_SECURITY_TLS_H_
