// expect: given more than once
// The same option setter twice is rejected with a readable message.
#include <keypool/keypool.hpp>

int main() {
    keypool::basic_pool<keypool::fake::connector, keypool::with_sync<keypool::sync::none>,
                        keypool::with_sync<keypool::sync::mutex>>
        p(keypool::fake::connector{}, "db");
}
