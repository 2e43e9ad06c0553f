// SPDX-License-Identifier: BSL-1.0
// A connector written from scratch against the documented concept (include/keypool/concepts.hpp):
// TCP connections to a line-based echo service. The example starts the service itself on
// 127.0.0.1 (an ephemeral port), pools connections to it, and checks what the pool promises:
// reuse, the reset between leases, a dead connection never handed out, connect errors classified.
//
// The five members a connector needs:
//   connection_type, target_type                     what a connection is and where it goes
//   connect(target, deadline, stop_token, ec)        open one before the deadline, or say why not
//   reset(connection) -> bool                        clear session state; false = destroy it
//   alive(connection) -> bool                        cheap check before reusing an idle one
//   close(connection)                                release it (called exactly once)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>

#include <keypool/keypool.hpp>

#include "expect.hpp"

namespace {

// ---- The connector ---------------------------------------------------------------------------

struct echo_target {
    std::uint16_t port = 0; // on 127.0.0.1
};

struct echo_connection {
    int fd = -1;
    std::string last_sent; // session state: what this lease sent (the reset clears it)
};

/// Thread-safe (it has no mutable state), noexcept in practice: the pool may call it from any thread.
// [snippet:connector]
class echo_connector {
public:
    using connection_type = echo_connection;
    using target_type = echo_target;

    std::optional<echo_connection> connect(const echo_target& t, keypool::time_point deadline, std::stop_token stop,
                                           std::error_code& ec) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) return fail(ec, keypool::errc::connect_failed);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(t.port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS)
            return close_and_fail(fd, ec, errno == ECONNREFUSED ? keypool::errc::upstream_unreachable
                                                                : keypool::errc::connect_failed);
        // Wait for the connect in short slices, so both the deadline and the stop token are honoured.
        for (;;) {
            if (stop.stop_requested()) return close_and_fail(fd, ec, keypool::errc::cancelled);
            const auto left = deadline - std::chrono::steady_clock::now();
            if (left <= keypool::duration::zero()) return close_and_fail(fd, ec, keypool::errc::timeout);
            pollfd p{fd, POLLOUT, 0};
            const auto slice = std::min<long long>(
                50, std::chrono::duration_cast<std::chrono::milliseconds>(left).count() + 1);
            if (::poll(&p, 1, static_cast<int>(slice)) > 0) break;
        }
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0)
            return close_and_fail(fd, ec, err == ECONNREFUSED ? keypool::errc::upstream_unreachable
                                                              : keypool::errc::connect_failed);
        ec.clear();
        return echo_connection{fd, {}};
    }

    bool reset(echo_connection& c) {
        c.last_sent.clear();
        return !has_unread_input(c); // a reply nobody read would reach the next borrower: destroy
    }

    bool alive(echo_connection& c) {
        // No round trip: a peer that closed shows as readable with 0 bytes (or an error).
        pollfd p{c.fd, POLLIN, 0};
        if (::poll(&p, 1, 0) == 0) return true; // nothing pending: alive
        char byte;
        return ::recv(c.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
    }

    void close(echo_connection& c) {
        ::close(c.fd);
        c.fd = -1;
    }

    // The example's own protocol helper (not part of the concept).
    static std::string call(echo_connection& c, const std::string& line) {
        c.last_sent = line;
        const std::string out = line + "\n";
        if (::send(c.fd, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) return {};
        std::string reply;
        char ch;
        for (;;) {
            pollfd p{c.fd, POLLIN, 0};
            if (::poll(&p, 1, 2000) <= 0 || ::recv(c.fd, &ch, 1, 0) != 1) return {};
            if (ch == '\n') return reply;
            reply += ch;
        }
    }

private:
    static std::optional<echo_connection> fail(std::error_code& ec, keypool::errc e) {
        ec = e;
        return std::nullopt;
    }
    static std::optional<echo_connection> close_and_fail(int fd, std::error_code& ec, keypool::errc e) {
        ::close(fd);
        return fail(ec, e);
    }
    static bool has_unread_input(echo_connection& c) {
        pollfd p{c.fd, POLLIN, 0};
        return ::poll(&p, 1, 0) > 0;
    }
};
// [/snippet:connector]

// [snippet:concept_check]
static_assert(keypool::connector<echo_connector>); // the concept, checked where it is written
// [/snippet:concept_check]

// ---- The service: echoes each line; "bye" makes it hang up ------------------------------------

class echo_service {
public:
    echo_service() {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        EXPECT(::listen(listen_fd_, 16) == 0);
        socklen_t len = sizeof addr;
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
        port_ = ntohs(addr.sin_port);
        thread_ = std::jthread([this](std::stop_token st) { serve(st); });
    }
    ~echo_service() {
        thread_.request_stop();
        ::shutdown(listen_fd_, SHUT_RDWR);
        thread_.join();
        ::close(listen_fd_);
    }
    std::uint16_t port() const { return port_; }
    int accepted() const { return accepted_.load(); }

private:
    void serve(std::stop_token st) {
        while (!st.stop_requested()) {
            const int fd = ::accept(listen_fd_, nullptr, nullptr);
            if (fd < 0) return;
            ++accepted_;
            std::thread([fd] {
                std::string line;
                char ch;
                while (::recv(fd, &ch, 1, 0) == 1) {
                    if (ch != '\n') {
                        line += ch;
                        continue;
                    }
                    if (line == "bye") break;
                    const std::string out = line + "\n";
                    ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
                    line.clear();
                }
                ::close(fd);
            }).detach();
        }
    }
    int listen_fd_ = -1;
    std::uint16_t port_ = 0;
    std::atomic<int> accepted_{0};
    std::jthread thread_;
};

} // namespace

int main() {
    using namespace std::chrono_literals;
    echo_service service;
    // [snippet:use]
    keypool::pool<echo_connector> pool(echo_connector{}, echo_target{service.port()},
                                       {.max_size = 2, .validate_after_idle = keypool::duration::zero()});
    // [/snippet:use]

    int first_fd = -1;
    {
        auto c = pool.acquire(2s);
        EXPECT(echo_connector::call(*c, "hello") == "hello");
        first_fd = c->fd;
    }
    {
        auto c = pool.acquire(2s);
        EXPECT(c->fd == first_fd);     // the idle connection, reused
        EXPECT(c->last_sent.empty());  // and reset before this lease got it
        EXPECT(echo_connector::call(*c, "again") == "again");
    }
    EXPECT(service.accepted() == 1);

    // The service hangs up on "bye": the next acquire sees the dead connection (alive() is false),
    // closes it and connects a new one instead of handing it out.
    {
        auto c = pool.acquire(2s);
        echo_connector::call(*c, "bye");
        pollfd p{c->fd, POLLIN, 0}; // wait until the hang-up has arrived (EOF makes it readable)
        EXPECT(::poll(&p, 1, 2000) == 1);
    }
    EXPECT(echo_connector::call(*pool.acquire(2s), "fresh") == "fresh");
    EXPECT(service.accepted() == 2);
    EXPECT(pool.stats().closed_for(keypool::close_reason::broken) + pool.stats().closed_for(keypool::close_reason::reset_failed) == 1);

    // Nothing listens on this port once its socket is closed: the connect error is classified.
    int probe = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    ::getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(probe);
    keypool::pool<echo_connector> nowhere(echo_connector{}, echo_target{ntohs(addr.sin_port)}, {.max_size = 1});
    std::error_code ec;
    auto none = nowhere.acquire(500ms, ec);
    EXPECT(!none && ec == keypool::errc::upstream_unreachable);

    auto s = pool.stats();
    std::printf("custom connector: acquires=%llu connects=%llu closed(broken)=%llu, unreachable -> %s\n",
                (unsigned long long)s.acquires, (unsigned long long)s.connects_ok,
                (unsigned long long)s.closed_for(keypool::close_reason::broken), ec.message().c_str());
    return 0;
}
