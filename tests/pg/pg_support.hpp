// SPDX-License-Identifier: BSL-1.0
// Support for the integration tests: the throwaway servers started by scripts/pg-fixture.sh (its
// env file), targets for them, and an admin connection that reads the server-side truth
// (pg_stat_activity) and terminates backends.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>

#include <csignal>
#include <sys/types.h>

#include <ostream>

#include <doctest/doctest.h>
#include <keypool/keypool.hpp>
#include <keypool/pq/connector.hpp>

namespace pg_test {

using namespace std::chrono_literals;

/// The variables scripts/pg-fixture.sh wrote (KEY=VALUE lines).
class environment {
public:
    explicit environment(const std::string& path) {
        std::ifstream in(path);
        if (!in)
            throw std::runtime_error("no PostgreSQL fixture env file at " + path +
                                     " (run the pg tests through ctest, which starts the fixture)");
        for (std::string line; std::getline(in, line);) {
            const auto eq = line.find('=');
            if (eq != std::string::npos) v_[line.substr(0, eq)] = line.substr(eq + 1);
        }
    }
    const std::string& operator[](const std::string& key) const {
        auto it = v_.find(key);
        if (it == v_.end()) throw std::runtime_error("fixture env has no " + key);
        return it->second;
    }

private:
    std::map<std::string, std::string> v_;
};

inline const environment& env() {
    static const environment e(std::getenv("KEYPOOL_PG_ENV") ? std::getenv("KEYPOOL_PG_ENV") : KEYPOOL_PG_ENV_FILE);
    return e;
}

enum class via { tcp, socket, bouncer };

/// A name no other test (or concurrently running test process) uses: pools tag their connections
/// with it as application_name, so pg_stat_activity tells which backends are theirs.
inline std::string unique_name(const char* what) {
    static std::atomic<int> n{0};
    return std::string("kp_") + what + "_" + std::to_string(::getpid()) + "_" + std::to_string(++n);
}

inline keypool::pq::password_source static_password(std::string pw) {
    return [pw = std::move(pw)](std::error_code&) -> std::optional<std::string> { return pw; };
}

/// A target for the app login (SCRAM) to database `db`.
inline keypool::pq::target app_target(const std::string& app_name, via how = via::tcp, std::string db = "app",
                                      std::string user = "", std::string password = "",
                                      const environment& e = env()) {
    keypool::pq::target t;
    switch (how) {
    case via::tcp: t.set("host", e["KEYPOOL_PG_HOST"]).set("port", e["KEYPOOL_PG_PORT"]); break;
    case via::socket: t.set("host", e["KEYPOOL_PG_SOCKET"]).set("port", e["KEYPOOL_PG_PORT"]); break;
    case via::bouncer: t.set("host", e["KEYPOOL_PG_HOST"]).set("port", e["KEYPOOL_PGB_PORT"]); break;
    }
    t.set("dbname", std::move(db));
    t.set("user", user.empty() ? e["KEYPOOL_PG_APP_USER"] : user);
    t.set("application_name", app_name);
    t.set("sslmode", "disable");
    t.password = static_password(password.empty() ? e["KEYPOOL_PG_APP_PASSWORD"] : password);
    return t;
}

/// Runs `sql` and returns the first column of the first row ("" for none/NULL); fails the test
/// (and returns nullopt) on an error.
inline std::optional<std::string> scalar(PGconn* pg, const char* sql) {
    PGresult* r = PQexec(pg, sql);
    std::optional<std::string> out;
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK) {
        out = (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) ? PQgetvalue(r, 0, 0) : "";
    } else if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
        out = "";
    }
    PQclear(r);
    return out;
}

/// SQLSTATE of running `sql`, "" on success.
inline std::string sqlstate_of(PGconn* pg, const char* sql) {
    PGresult* r = PQexec(pg, sql);
    std::string state;
    const auto st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        const char* s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
        state = s ? s : "?????";
    }
    PQclear(r);
    return state;
}

/// A superuser connection over the unix socket (trust), for server-side truth.
class admin {
public:
    explicit admin(const environment& e = env()) {
        const char* keys[] = {"host", "port", "dbname", "user", "application_name", nullptr};
        const char* vals[] = {e["KEYPOOL_PG_SOCKET"].c_str(), e["KEYPOOL_PG_PORT"].c_str(), "postgres",
                              e["KEYPOOL_PG_ADMIN"].c_str(), "keypool_test_admin", nullptr};
        pg_ = PQconnectdbParams(keys, vals, 0);
        if (PQstatus(pg_) != CONNECTION_OK) throw std::runtime_error(std::string("admin connect: ") + PQerrorMessage(pg_));
    }
    ~admin() { PQfinish(pg_); }
    admin(const admin&) = delete;
    admin& operator=(const admin&) = delete;

    std::string value(const std::string& sql) { return scalar(pg_, sql.c_str()).value_or("<error>"); }

    /// Backends (any state) whose application_name is `app`.
    int backends(const std::string& app) {
        return std::stoi(value("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app + "'"));
    }
    /// Terminates every backend of `app`; returns how many.
    int terminate(const std::string& app) {
        return std::stoi(value("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '" +
                               app + "'"));
    }
    PGconn* native() const noexcept { return pg_; }

private:
    PGconn* pg_ = nullptr;
};

/// Polls server-side state until `pred()` holds (backend exit is asynchronous). The bound only
/// turns a hang into a failure.
template <class Pred>
bool eventually(Pred pred, std::chrono::seconds bound = 20s) {
    const auto give_up = std::chrono::steady_clock::now() + bound;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > give_up) return false;
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

/// A fixture of one's own (scripts/pg-fixture.sh), for a test that stops and starts the server.
/// Stopped and removed when this object goes, also when the test fails.
class own_fixture {
public:
    own_fixture() : file_("/tmp/keypool-own-fixture-" + std::to_string(::getpid()) + ".env") {
        if (run("start") != 0) throw std::runtime_error("could not start an own PostgreSQL fixture");
        env_.emplace(file_);
    }
    ~own_fixture() { (void)run("stop"); }
    own_fixture(const own_fixture&) = delete;
    own_fixture& operator=(const own_fixture&) = delete;

    const environment& env() const { return *env_; }
    int run(const char* command) const {
        const std::string cmd = std::string("bash '") + KEYPOOL_SOURCE_DIR + "/scripts/pg-fixture.sh' " + command + " '" +
                                file_ + "'";
        return std::system(cmd.c_str());
    }

private:
    std::string file_;
    std::optional<environment> env_;
};

/// The PID of a fixture's postmaster (first line of its data directory's postmaster.pid), or 0.
inline pid_t postmaster_pid(const environment& e = env()) {
    std::ifstream in(e["KEYPOOL_PG_DIR"] + "/data/postmaster.pid");
    long pid = 0;
    if (!(in >> pid) || pid <= 0) return 0;
    return static_cast<pid_t>(pid);
}

/// True if `pid` is a live (not zombie) process named `postgres`: guards against signalling a
/// PID that is not a server process of ours.
inline bool is_postgres_process(pid_t pid) {
    std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
    std::string name;
    if (!std::getline(comm, name) || name != "postgres") return false;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) return false;
    const auto close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z' && line[close + 2] != 'X';
}

/// Freezes a server process (a backend, or the postmaster) with SIGSTOP: it stops answering while
/// its sockets stay open — a silent peer without root networking tricks. The tests run as the
/// user that runs the server, or as root: either may signal it. SIGCONT is sent by `resume()`
/// and, whatever happens, by the destructor, so a failing test never leaves a stopped process.
class frozen_process {
public:
    explicit frozen_process(pid_t pid) : pid_(pid) {
        if (pid_ <= 0 || !is_postgres_process(pid_)) throw std::runtime_error("not a postgres process: " + std::to_string(pid_));
        if (::kill(pid_, SIGSTOP) != 0) throw std::runtime_error("SIGSTOP failed for " + std::to_string(pid_));
        stopped_ = true;
        // SIGSTOP is delivered asynchronously: wait until the kernel reports the process stopped.
        if (!eventually([&] { return state() == 'T'; }, std::chrono::seconds(5))) {
            resume();
            throw std::runtime_error("process " + std::to_string(pid_) + " did not stop");
        }
    }
    ~frozen_process() { resume(); }
    frozen_process(const frozen_process&) = delete;
    frozen_process& operator=(const frozen_process&) = delete;

    void resume() noexcept {
        if (stopped_) (void)::kill(pid_, SIGCONT);
        stopped_ = false;
    }
    pid_t pid() const noexcept { return pid_; }

    /// The process state letter from /proc (T = stopped), or '?'.
    char state() const {
        std::ifstream stat("/proc/" + std::to_string(pid_) + "/stat");
        std::string line;
        if (!std::getline(stat, line)) return '?';
        const auto close = line.rfind(')');
        return (close != std::string::npos && close + 2 < line.size()) ? line[close + 2] : '?';
    }

private:
    pid_t pid_;
    bool stopped_ = false;
};

} // namespace pg_test
