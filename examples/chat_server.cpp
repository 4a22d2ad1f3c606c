// chat_server — a multi-user line chat: Twisted's classic tutorial server.
//
//   make && ./build/examples/chat_server 8123      (0 or nothing: a free port)
//   then, in two or more terminals:  nc 127.0.0.1 8123
//
// One idea: one protocol object per connection, shared state in the factory.
// Each connection gets its own Chat (its user's name, where it is in the
// conversation); the room everybody is in — who is connected, under which
// name — lives in the ChatFactory, which every Chat can reach. LineReceiver
// does the framing: TCP delivers bytes in arbitrary pieces, lineReceived
// sees whole lines.
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "reactor.hpp"

class Chat;

/// The room: one per server, shared by every connection.
class ChatFactory : public reactor::Factory {
public:
    /// Who is in the room, by name (std::less<> lets us look up string_views).
    std::map<std::string, Chat*, std::less<>> users;

    /// Called by the listening port for each new connection.
    std::unique_ptr<reactor::Protocol> buildProtocol(const reactor::Address& addr) override;
    /// Sends `line` to everybody in the room except `from`.
    void broadcast(const Chat* from, const std::string& line);
};

/// One user's connection.
class Chat : public reactor::LineReceiver {
public:
    explicit Chat(ChatFactory& room) : room_(room) {
        delimiter = "\n";  // nc and telnet both end lines with "\n"; a '\r' before it is dropped below
        MAX_LENGTH = 512;  // longer lines are refused (lineLengthExceeded)
    }

    void connectionMade() override { sendLine("What's your name?"); }

    void lineReceived(std::string_view line) override {
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (name_.empty())
            chooseName(line);  // the first line is the user's name
        else
            room_.broadcast(this, "<" + name_ + "> " + std::string(line));
    }

    /// A line over MAX_LENGTH: say why, then hang up (the default only hangs up).
    void lineLengthExceeded(std::string_view) override {
        sendLine("Error: line too long (the limit is " + std::to_string(MAX_LENGTH) + " bytes). Bye.");
        transport->loseConnection();  // sends the error first, then closes
    }

    void connectionLost(const reactor::Failure&) override {
        if (name_.empty()) return;  // never joined
        room_.users.erase(name_);
        room_.broadcast(this, "* " + name_ + " has left");
    }

private:
    void chooseName(std::string_view name) {
        if (name.empty()) {
            sendLine("Names can't be empty. What's your name?");
        } else if (room_.users.count(name)) {
            sendLine("Name taken, please choose another.");
        } else {
            name_ = std::string(name);
            room_.users[name_] = this;
            sendLine("Welcome, " + name_ + "!");
            room_.broadcast(this, "* " + name_ + " has joined");
        }
    }

    ChatFactory& room_;  // the factory outlives every connection it made
    std::string name_;   // empty until the user has picked one
};

inline std::unique_ptr<reactor::Protocol> ChatFactory::buildProtocol(const reactor::Address&) {
    return std::make_unique<Chat>(*this);
}

inline void ChatFactory::broadcast(const Chat* from, const std::string& line) {
    for (auto& [name, user] : users)
        if (user != from) user->sendLine(line);
}

#ifndef CHAT_SERVER_NO_MAIN  // tests/test_basic.cpp includes this file for the classes above
int main(int argc, char** argv) {
    auto port = static_cast<std::uint16_t>(argc > 1 ? std::atoi(argv[1]) : 0);
    reactor::Reactor r;
    ChatFactory room;
    reactor::ListeningPort listening = r.listenTCP(port, room);
    std::printf("chat server listening on %s\n", listening.getHost().str().c_str());
    std::fflush(stdout);
    r.run(true);  // Ctrl-C stops it cleanly
    return 0;
}
#endif
