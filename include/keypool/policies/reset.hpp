// SPDX-License-Identifier: BSL-1.0
// Reset policies: where the connector's `reset` runs for a returned connection. Whichever is
// chosen, a connection is reset before anyone can borrow it again, and a failed reset destroys it.
#pragma once

namespace keypool::reset_at {

/// The releasing thread resets before the connection becomes idle. The lease destructor pays
/// one round trip; idle connections are always clean.
struct release {};

/// The default. Return only marks the connection dirty; the next borrower resets it just before
/// it is handed out (the design Go's database/sql settled on, golang/go #31480 and #22699). The
/// release is as cheap as possible, and a connection that is closed while idle is never reset.
struct checkout {};

/// A returned connection waits on a dirty list; the pool signals (`set_reset_signal`, which a
/// `janitor` uses) and `maintain()` resets it off every caller's path, then makes it idle.
/// Borrowers pop only reset connections; one that finds none idle resets a dirty one itself
/// rather than connect or wait. Without maintain() running it behaves like `checkout`, slower.
struct background {};

} // namespace keypool::reset_at
