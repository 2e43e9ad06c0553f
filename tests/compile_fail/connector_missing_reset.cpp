// expect: connector_has_reset
// A connector without reset() must fail with an error that names the missing requirement.
#include <keypool/pool.hpp>

struct conn {};
struct bad {
    using connection_type = conn;
    using target_type = int;
    std::optional<conn> connect(const int&, keypool::time_point, std::stop_token, std::error_code&) { return conn{}; }
    bool alive(conn&) { return true; }
    void close(conn&) {}
};

int main() { keypool::pool<bad> p(bad{}, 0); }
