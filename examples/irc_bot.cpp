// irc_bot — the seed's IRC bot: joins a channel, greets whoever joins, and
// answers "<botnick>: <text>" with "<nick>: <text>", and joins the channels
// it is invited to. Reconnects with Twisted's backoff when the connection
// drops; on SIGINT/SIGTERM it says QUIT to the server and does not reconnect.
//
//   make && ./build/examples/irc_bot 127.0.0.1 6667 bot '#demo'
//   (with the toy server: ./build/examples/irc_server 6667)
//   ./build/examples/irc_bot --tls irc.libera.chat 6697 bot '#demo'
//   (TLS, the certificate verified for the host name: the Makefile builds
//   the bot with -DREACTOR_WITH_OPENSSL where OpenSSL is installed)
//
// IRC_SASL_USER and IRC_SASL_PASSWORD in the environment log in with SASL
// PLAIN where the server offers it; a refused password stops the bot (it
// would be refused again on every reconnect).
//
// One idea: a protocol is just callbacks (signedOn, userJoined, privmsg);
// the factory decides what happens between connections.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#define REACTOR_WITH_IRC  // the IRC client (section 13 of the header)
#include "reactor.hpp"

using reactor::irc::IRCClient;

struct Bot : IRCClient {
    std::string channel;
    reactor::ReconnectingClientFactory* reconnecting = nullptr;

    // On the Reactor (not just a clock): stopping it sends QUIT :shutdownMessage.
    explicit Bot(reactor::Reactor* r) : IRCClient(r) {}

    void signedOn() override {
        std::printf("signed on as %s\n", nickname.c_str());
        std::fflush(stdout);
        reconnecting->resetDelay();  // connected: the next outage starts from initialDelay
        join(channel);
    }
    void joined(const std::string& ch) override {
        std::printf("joined %s\n", ch.c_str());
        std::fflush(stdout);
    }
    void saslFailed(const std::string& reason) override {
        std::printf("SASL failed (%s); not reconnecting\n", reason.c_str());
        std::fflush(stdout);
        reconnecting->stopTrying();
        IRCClient::saslFailed(reason);  // QUIT, close
    }
    void invited(const std::string& inviter, const std::string& ch) override {
        std::printf("invited to %s by %s\n", ch.c_str(), inviter.c_str());
        std::fflush(stdout);
        join(ch);
    }
    // The seed's callback: `user` is the nick only, as in Twisted.
    void userJoined(const std::string& user, const std::string& ch) override { say(ch, "Hello " + user); }
    // "<botnick>: <text>" -> "<nick>: <text>", in the channel or in private.
    void privmsg(const std::string& user, const std::string& target, const std::string& message) override {
        std::string addressed = nickname + ": ";
        if (message.compare(0, addressed.size(), addressed) != 0) return;
        std::string nick = user.substr(0, user.find('!'));
        msg(isChannel(target) ? target : nick, nick + ": " + message.substr(addressed.size()));
    }
};

struct BotFactory : reactor::ReconnectingClientFactory {
    reactor::Reactor& r;
    std::string nick, channel;
    BotFactory(reactor::Reactor& reactor, std::string n, std::string c)
        : ReconnectingClientFactory(reactor), r(reactor), nick(std::move(n)), channel(std::move(c)) {
        initialDelay = delay = 0.5;
        maxDelay = 30;
        protocol = [this]() -> std::unique_ptr<reactor::Protocol> {
            auto bot = std::make_unique<Bot>(&r);  // the reactor is the bot's clock, and stops it
            bot->nickname = nick;
            bot->channel = channel;
            bot->reconnecting = this;
            bot->versionName = "reactor.hpp irc_bot";
            bot->lineRate = 0.2;  // flood control: at most 5 lines a second
            bot->shutdownMessage = "irc_bot stopping";
            if (const char* user = std::getenv("IRC_SASL_USER")) bot->saslUsername = user;
            if (const char* pass = std::getenv("IRC_SASL_PASSWORD")) bot->saslPassword = pass;
            return bot;
        };
    }
    void clientConnectionLost(reactor::IConnector& c, const reactor::Failure& reason) override {
        // While the reactor stops (a signal), the base class does not retry.
        std::printf("connection lost (%s); %s\n", reason.getErrorMessage().c_str(),
                    r.stopping() ? "shutting down" : continueTrying ? "reconnecting" : "stopping");
        std::fflush(stdout);
        ReconnectingClientFactory::clientConnectionLost(c, reason);
        if (!continueTrying && !r.stopping()) r.stop();  // stopTrying() was called: nothing left to do
    }
    void clientConnectionFailed(reactor::IConnector& c, const reactor::Failure& reason) override {
        std::printf("connection failed (%s); %s\n", reason.getErrorMessage().c_str(),
                    r.stopping() ? "shutting down" : "retrying");
        std::fflush(stdout);
        ReconnectingClientFactory::clientConnectionFailed(c, reason);
    }
};

int main(int argc, char** argv) {
    const char* name = argv[0];
    bool tls = argc > 1 && std::strcmp(argv[1], "--tls") == 0;
    if (tls) {
        --argc;
        ++argv;
    }
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s [--tls] HOST PORT NICK CHANNEL\n", name);
        return 2;
    }
    int port = std::atoi(argv[2]);
    if (port <= 0 || port > 65535) {
        std::fprintf(stderr, "bad port: %s\n", argv[2]);
        return 2;
    }
    reactor::Reactor r;
    BotFactory factory(r, argv[3], argv[4]);
    if (tls) {
#if defined(REACTOR_WITH_OPENSSL)
        // The same bot over TLS: only the connect call changes. Reconnects
        // go through TLS again, and a certificate that does not verify for
        // HOST ends the connection with a CertificateError saying why.
        r.connectSSL(argv[1], port, factory, reactor::ssl::optionsForClientTLS(argv[1]));
#else
        std::fprintf(stderr, "--tls needs a build with TLS: -DREACTOR_WITH_OPENSSL ... -lssl -lcrypto\n");
        return 2;
#endif
    } else {
        r.connectTCP(argv[1], port, factory);
    }
    r.run(true);  // SIGINT/SIGTERM stop the loop cleanly: QUIT, then no reconnect
    factory.stopTrying();
    return 0;
}
