// Reserves 127.0.0.1 ports for servers that a test starts later (or restarts):
// a socket bound with SO_REUSEPORT (but not listening) holds the port, so no
// other process can take it, while a gRPC server (which also sets
// SO_REUSEPORT) can bind and listen on it. Connections go only to listening
// sockets, so the reservation never steals one.
#ifndef TESSERA_TESTS_SERVER_INTEGRATION_PORT_RESERVATION_H_
#define TESSERA_TESTS_SERVER_INTEGRATION_PORT_RESERVATION_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace tessera::server::testing {

class PortReservation {
 public:
  // Aborts if no port can be reserved (the test cannot run then).
  PortReservation() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd_ < 0 || setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) abort();
    sockaddr_in addr;
    std::memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) abort();
    socklen_t len = sizeof(addr);
    if (getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) abort();
    port_ = ntohs(addr.sin_port);
  }
  ~PortReservation() { close(fd_); }
  PortReservation(const PortReservation&) = delete;
  PortReservation& operator=(const PortReservation&) = delete;

  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

}  // namespace tessera::server::testing

#endif  // TESSERA_TESTS_SERVER_INTEGRATION_PORT_RESERVATION_H_
