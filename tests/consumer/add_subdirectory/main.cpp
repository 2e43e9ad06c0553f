#include <keypool/keypool.hpp>

int main() { return 0; }
