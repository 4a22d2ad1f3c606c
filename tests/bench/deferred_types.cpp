// What a program pays to compile per Deferred<T> it uses: five value types,
// each with a callback, an errback and an addBoth, then fired. `make
// footprint` times this TU against `#include "reactor.hpp"` alone: the
// difference, divided by five, is the cost of one more Deferred<T>.
#include <string>

#include "reactor.hpp"

namespace {
struct A { int x; };
struct B { std::string s; };
struct C { double d; };
struct D { long l; };
struct E { char c; };

template <class T>
void use(T v) {
    reactor::Deferred<T> d;
    d.addCallback([](T t) { return t; });
    d.addErrback([](reactor::Failure f) { return f; });
    d.addBoth([](reactor::Result<T> r) { return r; });
    d.callback(std::move(v));
}
}  // namespace

int main() {
    use(A{1});
    use(B{"b"});
    use(C{1.0});
    use(D{1});
    use(E{'e'});
}
