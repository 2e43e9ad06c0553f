// expect: use of deleted function
// A lease is move-only: copying it does not compile.
#include <keypool/keypool.hpp>

int main() {
    keypool::pool<keypool::fake::connector> p(keypool::fake::connector{}, "db");
    auto a = p.acquire();
    auto b = a;
}
