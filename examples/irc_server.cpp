// irc_server — a toy IRC server on LineReceiver: enough IRC for the bot and
// for a human with a real client (irssi, weechat, hexchat).
//
//   make && ./build/examples/irc_server 6667      (default 6667; 0: any free port)
//   irssi -c 127.0.0.1 -p 6667
//
// One idea: a server is many protocol objects sharing one state object
// (here `Network`), all on the one reactor thread, so no locks.
// Supports NICK USER JOIN PART PRIVMSG NOTICE TOPIC KICK NAMES PING PONG
// QUIT; numerics 001-005, 331/332, 353/366, 375/372/376, 401/403/404,
// 421, 431/432/433, 441/442, 451, 461, 482. One network, no modes but op.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#define REACTOR_WITH_IRC  // the IRC client (section 13 of the header)
#include "reactor.hpp"

namespace {

const std::string serverName = "toy.irc";
/// The console log of connections, registrations and joins (tests turn it off).
bool verbose = true;
struct Client;

struct Channel {
    std::string topic;
    std::vector<Client*> members;  // in join order
    std::set<Client*> ops;         // the first to join is op
};

struct Network {
    std::map<std::string, Client*> nicks;  // lower-cased nick -> client
    std::map<std::string, Channel> channels;  // lower-cased name -> channel
};

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    return s;
}

struct Client : reactor::LineReceiver {
    Network& net;
    std::string nick, user, realname;
    bool registered = false;
    explicit Client(Network& n) : net(n) {
        delimiter = "\n";  // accept LF and CRLF (the CR is stripped below)
        MAX_LENGTH = 4096;
    }

    std::string mask() const { return nick + "!" + user + "@" + transport->getPeer().host; }
    void send(const std::string& line) { sendLine(line + "\r"); }  // "\r" + delimiter "\n" = CRLF
    void numeric(const char* code, const std::string& rest) {
        send(":" + serverName + " " + code + " " + (nick.empty() ? "*" : nick) + " " + rest);
    }
    /// Sends `line` to everyone sharing a channel with us (and to us if `self`).
    void toPeers(const std::string& line, bool self) {
        std::set<Client*> seen;
        if (self) seen.insert(this), send(line);
        for (auto& entry : net.channels)
            if (isMember(entry.second))
                for (Client* c : entry.second.members)
                    if (seen.insert(c).second) c->send(line);
    }
    bool isMember(const Channel& ch) const {
        for (Client* c : ch.members)
            if (c == this) return true;
        return false;
    }
    void removeFrom(Channel& ch, Client* c) {
        ch.members.erase(std::remove(ch.members.begin(), ch.members.end(), c), ch.members.end());
        ch.ops.erase(c);
    }
    void dropEmptyChannels() {
        for (auto it = net.channels.begin(); it != net.channels.end();)
            it = it->second.members.empty() ? net.channels.erase(it) : std::next(it);
    }

    void connectionMade() override {
        if (verbose) std::printf("connection from %s\n", transport->getPeer().str().c_str());
        std::fflush(stdout);
    }
    void connectionLost(const reactor::Failure& reason) override { leaveNetwork("Connection closed: " + reason.getErrorMessage()); }
    void leaveNetwork(const std::string& why) {
        if (registered) {
            toPeers(":" + mask() + " QUIT :" + why, false);
            if (verbose) std::printf("%s quit (%s)\n", nick.c_str(), why.c_str());
            std::fflush(stdout);
        }
        for (auto& entry : net.channels) removeFrom(entry.second, this);
        dropEmptyChannels();
        auto it = net.nicks.find(lower(nick));
        if (it != net.nicks.end() && it->second == this) net.nicks.erase(it);
        registered = false;
    }

    // CR, LF and CRLF all end a line (RFC 1459 allows a bare CR). A CR is
    // never data: relaying one would let a user forge server lines to any
    // client that honours bare CR, as IRCClient does.
    void lineReceived(std::string_view raw) override {
        for (std::size_t cr; (cr = raw.find('\r')) != std::string_view::npos; raw.remove_prefix(cr + 1))
            handleLine(raw.substr(0, cr));
        handleLine(raw);
    }

    void handleLine(std::string_view raw) {
        if (raw.empty() || raw.find('\0') != std::string_view::npos) return;  // NUL: never relayed
        reactor::irc::Message m = reactor::irc::parsemsg(raw);
        if (!m) return;
        std::string cmd = m.command;
        for (char& c : cmd) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
        const auto& p = m.params;
        if (cmd == "NICK") return doNick(p);
        if (cmd == "USER") {
            if (p.size() < 4) return numeric("461", "USER :Not enough parameters");
            user = p[0].substr(0, 10);
            realname = p[3];
            return tryRegister();
        }
        if (cmd == "PING") return send(":" + serverName + " PONG " + serverName + " :" + (p.empty() ? "" : p[0]));
        if (cmd == "PONG") return;
        if (cmd == "QUIT") {
            leaveNetwork(p.empty() ? "Quit" : "Quit: " + p[0]);
            send("ERROR :Closing link");
            return transport->loseConnection();
        }
        if (!registered) return numeric("451", ":You have not registered");
        if (cmd == "JOIN") return doJoin(p);
        if (cmd == "PART") return doPart(p);
        if (cmd == "PRIVMSG" || cmd == "NOTICE") return doMessage(cmd, p);
        if (cmd == "TOPIC") return doTopic(p);
        if (cmd == "KICK") return doKick(p);
        if (cmd == "NAMES") return p.empty() ? numeric("366", "* :End of NAMES list") : names(p[0]);
        numeric("421", cmd + " :Unknown command");
    }

    void doNick(const std::vector<std::string>& p) {
        if (p.empty() || p[0].empty()) return numeric("431", ":No nickname given");
        const std::string& n = p[0];
        bool ok = n.size() <= 30 && !(n[0] >= '0' && n[0] <= '9') && n[0] != '-' && n[0] != '#';
        for (char c : n)
            ok = ok && static_cast<unsigned char>(c) > ' ' && c != ',' && c != '*' && c != '!' && c != '@' && c != ':';
        if (!ok) return numeric("432", n + " :Erroneous Nickname");
        auto it = net.nicks.find(lower(n));
        if (it != net.nicks.end() && it->second != this) return numeric("433", n + " :Nickname is already in use");
        if (registered) {
            toPeers(":" + mask() + " NICK :" + n, true);
            net.nicks.erase(lower(nick));
            net.nicks[lower(n)] = this;
        }
        nick = n;
        tryRegister();
    }
    void tryRegister() {
        if (registered || nick.empty() || user.empty()) return;
        auto it = net.nicks.find(lower(nick));
        if (it != net.nicks.end() && it->second != this) return numeric("433", nick + " :Nickname is already in use");
        net.nicks[lower(nick)] = this;
        registered = true;
        numeric("001", ":Welcome to the toy IRC network " + mask());
        numeric("002", ":Your host is " + serverName + ", running reactor.hpp");
        numeric("003", ":This server was created just now");
        numeric("004", serverName + " reactor-0 i nto");
        numeric("005", "CHANTYPES=# PREFIX=(o)@ NICKLEN=30 CHANMODES=,,,nt NETWORK=ToyNet :are supported by this server");
        numeric("375", ":- " + serverName + " Message of the day -");
        numeric("372", ":- Be nice. This server keeps nothing.");
        numeric("376", ":End of MOTD command");
        if (verbose) std::printf("%s registered\n", mask().c_str());
        std::fflush(stdout);
    }
    void names(const std::string& name) {
        auto it = net.channels.find(lower(name));
        if (it != net.channels.end()) {
            std::string list;
            for (Client* c : it->second.members) list += (list.empty() ? "" : " ") + (it->second.ops.count(c) ? "@" : std::string()) + c->nick;
            numeric("353", "= " + name + " :" + list);
        }
        numeric("366", name + " :End of NAMES list");
    }
    void doJoin(const std::vector<std::string>& p) {
        if (p.empty()) return numeric("461", "JOIN :Not enough parameters");
        std::string_view list = p[0];
        while (!list.empty()) {
            std::string name(list.substr(0, list.find(',')));
            list.remove_prefix(std::min(list.size(), name.size() + 1));
            if (name.size() < 2 || name[0] != '#' || name.size() > 50) {
                numeric("403", name + " :No such channel");
                continue;
            }
            Channel& ch = net.channels[lower(name)];
            if (isMember(ch)) continue;
            if (ch.members.empty()) ch.ops.insert(this);
            ch.members.push_back(this);
            for (Client* c : ch.members) c->send(":" + mask() + " JOIN " + name);
            if (!ch.topic.empty()) numeric("332", name + " :" + ch.topic);
            names(name);
            if (verbose) std::printf("%s joined %s\n", nick.c_str(), name.c_str());
            std::fflush(stdout);
        }
    }
    Channel* memberChannel(const std::string& name) {
        auto it = net.channels.find(lower(name));
        if (it == net.channels.end()) return numeric("403", name + " :No such channel"), nullptr;
        if (!isMember(it->second)) return numeric("442", name + " :You're not on that channel"), nullptr;
        return &it->second;
    }
    void doPart(const std::vector<std::string>& p) {
        if (p.empty()) return numeric("461", "PART :Not enough parameters");
        Channel* ch = memberChannel(p[0]);
        if (!ch) return;
        for (Client* c : ch->members) c->send(":" + mask() + " PART " + p[0] + (p.size() > 1 ? " :" + p[1] : ""));
        removeFrom(*ch, this);
        dropEmptyChannels();
    }
    void doMessage(const std::string& cmd, const std::vector<std::string>& p) {
        if (p.size() < 2 || p[1].empty()) return numeric("412", ":No text to send");
        std::string line = ":" + mask() + " " + cmd + " " + p[0] + " :" + p[1];
        if (p[0][0] == '#') {
            auto it = net.channels.find(lower(p[0]));
            if (it == net.channels.end()) return numeric("403", p[0] + " :No such channel");
            if (!isMember(it->second)) return numeric("404", p[0] + " :Cannot send to channel");
            for (Client* c : it->second.members)
                if (c != this) c->send(line);
            return;
        }
        auto it = net.nicks.find(lower(p[0]));
        if (it == net.nicks.end()) return numeric("401", p[0] + " :No such nick/channel");
        it->second->send(line);
    }
    void doTopic(const std::vector<std::string>& p) {
        if (p.empty()) return numeric("461", "TOPIC :Not enough parameters");
        Channel* ch = memberChannel(p[0]);
        if (!ch) return;
        if (p.size() == 1) return ch->topic.empty() ? numeric("331", p[0] + " :No topic is set") : numeric("332", p[0] + " :" + ch->topic);
        ch->topic = p[1];
        for (Client* c : ch->members) c->send(":" + mask() + " TOPIC " + p[0] + " :" + p[1]);
    }
    void doKick(const std::vector<std::string>& p) {
        if (p.size() < 2) return numeric("461", "KICK :Not enough parameters");
        Channel* ch = memberChannel(p[0]);
        if (!ch) return;
        if (!ch->ops.count(this)) return numeric("482", p[0] + " :You're not channel operator");
        Client* victim = nullptr;
        for (Client* c : ch->members)
            if (lower(c->nick) == lower(p[1])) victim = c;
        if (!victim) return numeric("441", p[1] + " " + p[0] + " :They aren't on that channel");
        for (Client* c : ch->members) c->send(":" + mask() + " KICK " + p[0] + " " + victim->nick + " :" + (p.size() > 2 ? p[2] : nick));
        removeFrom(*ch, victim);
        dropEmptyChannels();
    }
};

}  // namespace

#ifndef IRC_SERVER_NO_MAIN  // tests/test_memory.cpp includes this file for the classes above
int main(int argc, char** argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 6667;
    if (port < 0 || port > 65535) {
        std::fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
        return 2;
    }
    reactor::Reactor r;
    Network net;
    reactor::Factory factory;
    factory.protocol = [&net]() -> std::unique_ptr<reactor::Protocol> { return std::make_unique<Client>(net); };
    reactor::ListeningPort listening = r.listenTCP(static_cast<std::uint16_t>(port), factory, 50, "127.0.0.1");
    if (!listening) return 1;
    std::printf("listening on %u\n", listening.getHost().port);  // the demo driver reads this line
    std::fflush(stdout);
    r.run(true);
    return 0;
}
#endif
