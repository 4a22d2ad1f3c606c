// The same echo server as tests/bench/echo_minimal.cpp, written with
// standalone Asio (Debian: libasio-dev) in the style of Asio's own
// async_tcp_echo_server example: `make footprint` builds both and prints
// their sizes and compile times side by side.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <asio.hpp>
using asio::ip::tcp;
class Session : public std::enable_shared_from_this<Session> {
public:
    explicit Session(tcp::socket s) : socket_(std::move(s)) {}
    void start() { read(); }
private:
    void read() {
        auto self = shared_from_this();
        socket_.async_read_some(asio::buffer(data_), [this, self](std::error_code ec, std::size_t n) {
            if (!ec) write(n);
        });
    }
    void write(std::size_t n) {
        auto self = shared_from_this();
        asio::async_write(socket_, asio::buffer(data_, n), [this, self](std::error_code ec, std::size_t) {
            if (!ec) read();
        });
    }
    tcp::socket socket_;
    char data_[65536];
};
static void doAccept(tcp::acceptor& a) {
    a.async_accept([&a](std::error_code ec, tcp::socket s) {
        if (!ec) std::make_shared<Session>(std::move(s))->start();
        doAccept(a);
    });
}
int main(int argc, char** argv) {
    asio::io_context io;
    tcp::acceptor acceptor(io, tcp::endpoint(tcp::v4(), static_cast<unsigned short>(argc > 1 ? std::atoi(argv[1]) : 0)));
    std::printf("listening on %u\n", acceptor.local_endpoint().port());
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](std::error_code, int) { io.stop(); });
    doAccept(acceptor);
    io.run();
}
