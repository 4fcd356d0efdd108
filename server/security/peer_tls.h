// Peer TLS: the credentials of the peer port (mutual TLS with a cluster CA)
// and the member id a peer certificate names.
//
// Where it sits: tessera-server loads them once at start from --peer-cert,
// --peer-key and --peer-ca (or --insecure-peers); the peer gRPC server uses
// server(), the transport's channels to other members channel() plus
// ChannelArgsFor(id), and PeerService asks CertifiedPeerId() of every call.
//
// Certificates: a member's certificate has the common name "node-<id>" and
// the DNS subject alternative name "node-<id>" and is signed by the cluster
// CA; deploy/gen-certs.sh makes them. Both ends verify: the server requires
// and verifies a client certificate from the CA, the client verifies that
// the server's certificate names the member it dials (target name override),
// whatever the address.
//
// Immutable after Load(); thread-safe.
#ifndef TESSERA_SERVER_SECURITY_PEER_TLS_H_
#define TESSERA_SERVER_SECURITY_PEER_TLS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace tessera::server::security {

struct PeerTlsFiles {
  std::string cert;  // PEM certificate of this member ("node-<id>")
  std::string key;   // PEM private key of that certificate
  std::string ca;    // PEM certificate(s) of the cluster CA
};

// "node-<id>": the common name and DNS name of member `id`'s certificate.
std::string MemberCertName(uint64_t id);

class PeerCredentials {
 public:
  // Plaintext peers (--insecure-peers): anyone who reaches the peer port can
  // impersonate any member. For tests of other things and closed networks.
  static PeerCredentials Insecure();
  // Reads and checks the files: each parses, the key matches the
  // certificate, the certificate is signed by the CA, is currently valid and
  // names member `self`. kInvalidArgument with a one-line reason otherwise.
  static absl::StatusOr<PeerCredentials> Load(const PeerTlsFiles& files, uint64_t self);

  bool secure() const { return secure_; }
  std::shared_ptr<grpc::ServerCredentials> server() const;
  std::shared_ptr<grpc::ChannelCredentials> channel() const;
  // Sets what a channel to member `id` needs (with TLS: the name its
  // certificate must carry).
  void ConfigureChannelTo(uint64_t id, grpc::ChannelArguments* args) const;

 private:
  bool secure_ = false;
  PeerTlsFiles pem_;  // file contents, not paths
};

// The member id certified by the peer of a call: the "node-<id>" common name
// of its verified client certificate. kUnauthenticated when the call carries
// no verified certificate or the name is not of that form.
absl::StatusOr<uint64_t> CertifiedPeerId(const grpc::AuthContext& context);

}  // namespace tessera::server::security

#endif  // TESSERA_SERVER_SECURITY_PEER_TLS_H_
