// The reference TU of `make footprint`: what any hand-written poll() server
// includes anyway (POSIX sockets and the common std headers), and nothing
// else. The header's own cost is its compile time minus this one's.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

int main() {
    std::vector<std::string> lines;
    std::function<void(int)> onReadable = [&](int fd) { lines.push_back(std::to_string(fd)); };
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) onReadable(fd);
    ::close(fd);
    std::printf("%zu\n", lines.size());
    return 0;
}
