//! The backends under test, one row each with what each can do, and
//! `scenarios!`, which runs a scenario written once on every backend whose row
//! has the capability it needs. A new backend joins every scenario it can run
//! with one row in `table!`.
//!
//! Capabilities (a row lists those it has; `any` matches every row; a
//! scenario may need several: `scenarios!(pause + exact_ttl, own: …)`):
//! - `kinds`: the lock kinds --shared, --slots and --fair.
//! - `notices`: `release --force` reaches a live holder at once (pushed notice).
//! - `restart`: its harness kills a server of the test's own and starts it
//!   again on the same address (`Faults::kill`, `Faults::restart`).
//! - `durable`: that server keeps its data through a restart, and the harness
//!   reads a name's stored expiry (`Faults::expires_us`).
//! - `pause`: its harness stops the server (SIGSTOP) and resumes it.
//! - `sessions`: its harness ends every client session at the server and
//!   names the session holding a name's wake-up lock (and has `durable`).
//! - `reset`: one TCP address that the harness tells (`Faults::port`), so
//!   that a proxy in front of it can close dlock's connections.
//! - `exact_ttl`: `status --json` gives the time a lease has left to the
//!   millisecond (etcd's leases count whole seconds), so a test can tell
//!   when the lease ends on the server. Listed where a scenario checked it.

// benches/dlock.rs includes this harness too, without the tests' macros.
#![allow(unused_macros)]

use std::ops::Deref;
use std::sync::Arc;

use super::{Ctx, Server};

/// The table. Each row: name, the cargo feature that builds its backend in
/// (a build without it skips the row), the server the ordinary scenarios
/// share (an expression giving an `Arc` of it), a server of the test's own for fault
/// scenarios (empty where the harness has none), and the capabilities.
macro_rules! table {
    ($($what:tt)*) => {
        $crate::common::backends::pick! { [$($what)*]
            redis "redis" {std::sync::Arc::new($crate::common::redis::Redis::start())}
                {$crate::common::redis::Redis::start()}
                [kinds notices restart pause exact_ttl reset];
            redis_sentinel "redis" {$crate::common::sentinel::SentinelSet::shared()} {} [kinds notices];
            redis_cluster "redis" {$crate::common::cluster::ClusterSet::shared()} {} [kinds notices];
            redlock "redis" {$crate::common::redlock::RedlockSet::shared()} {} [notices];
            sqlite "sqlite" {std::sync::Arc::new($crate::common::sqlite::Sqlite::new())} {} [kinds notices];
            mariadb "mysql" {$crate::common::mariadb::MariaDb::shared()}
                {$crate::common::mariadb::MariaDb::start()}
                [kinds notices restart durable pause sessions exact_ttl reset];
            postgres "postgres" {$crate::common::postgres::Postgres::shared()}
                {$crate::common::postgres::Postgres::start()}
                [kinds notices restart durable pause sessions exact_ttl reset];
            etcd "etcd" {$crate::common::etcd::Etcd::shared()}
                {$crate::common::etcd::Etcd::cluster(1)}
                [kinds notices restart pause reset];
            zookeeper "zookeeper" {$crate::common::zookeeper::ZooKeeper::shared()}
                {$crate::common::zookeeper::ZooKeeper::ensemble(1)}
                [kinds notices restart pause exact_ttl reset];
        }
    };
}
pub(crate) use table;

/// `scenarios!(CAP, shared: f, g, …)`: a module per backend whose row has
/// CAP, with one test per scenario `f(&Ctx)` on the server the tests share;
/// `scenarios!(CAP, own: f, …)` runs `f(&Rig)` on a server of the test's own
/// instead, which the scenario may break. The modules are named after the
/// rows, so a caller that has two lists wraps each in a module of its own.
macro_rules! scenarios {
    ($cap:ident $(+ $more:ident)*, $mode:ident: $($f:ident),* $(,)?) => {
        $crate::common::backends::table! { [$cap $($more)*] $mode [$($f)*] }
    };
}
pub(crate) use scenarios;

/// Walks the rows, keeping those that have every capability asked for.
macro_rules! pick {
    ([$caps:tt $mode:ident $fns:tt]) => {};
    ([$caps:tt $mode:ident $fns:tt]
     $name:ident $feature:literal $shared:tt $own:tt $row:tt; $($rest:tt)*) => {
        $crate::common::backends::has_all! { $caps $row =>
            $crate::common::backends::emit! { $name $feature $mode $shared $own $fns }
        }
        $crate::common::backends::pick! { [$caps $mode $fns] $($rest)* }
    };
}
pub(crate) use pick;

/// The tokens after `=>` if the row has each of the capabilities.
macro_rules! has_all {
    ([] $row:tt => $($e:tt)*) => { $($e)* };
    ([$cap:ident $($more:ident)*] $row:tt => $($e:tt)*) => {
        $crate::common::backends::has! { $cap $row =>
            $crate::common::backends::has_all! { [$($more)*] $row => $($e)* }
        }
    };
}
pub(crate) use has_all;

/// The tokens after `=>` if the capability is in the list (one literal arm
/// per capability: macro_rules cannot compare two identifiers it was given).
macro_rules! has {
    (any [$($c:ident)*] => $($e:tt)*) => { $($e)* };
    (kinds [kinds $($c:ident)*] => $($e:tt)*) => { $($e)* };
    (notices [notices $($c:ident)*] => $($e:tt)*) => { $($e)* };
    (restart [restart $($c:ident)*] => $($e:tt)*) => { $($e)* };
    (durable [durable $($c:ident)*] => $($e:tt)*) => { $($e)* };
    (pause [pause $($c:ident)*] => $($e:tt)*) => { $($e)* };
    (sessions [sessions $($c:ident)*] => $($e:tt)*) => { $($e)* };
    (exact_ttl [exact_ttl $($c:ident)*] => $($e:tt)*) => { $($e)* };
    (reset [reset $($c:ident)*] => $($e:tt)*) => { $($e)* };
    ($cap:ident [$other:ident $($c:ident)*] => $($e:tt)*) => {
        $crate::common::backends::has! { $cap [$($c)*] => $($e)* }
    };
    ($cap:ident [] => $($e:tt)*) => {};
}
pub(crate) use has;

/// One backend's module of tests.
macro_rules! emit {
    ($name:ident $feature:literal shared $shared:tt $own:tt [$($f:ident)*]) => {
        #[cfg(feature = $feature)]
        mod $name {
            fn ctx() -> $crate::common::Ctx {
                let server: std::sync::Arc<dyn $crate::common::Server> = $shared;
                $crate::common::Ctx::new(server)
            }
            $(#[test] fn $f() { super::$f(&ctx()) })*
        }
    };
    ($name:ident $feature:literal own $shared:tt $own:tt [$($f:ident)*]) => {
        #[cfg(feature = $feature)]
        mod $name {
            $(#[test] fn $f() { super::$f(&$crate::common::backends::Rig::new($own)) })*
        }
    };
}
pub(crate) use emit;

/// What a fault scenario may do to a server of its own. Only what the row's
/// capabilities promise is ever called; the rest says it is missing.
pub trait Faults: Server {
    /// `restart`: SIGKILL, no clean shutdown.
    fn kill(&self) {
        missing("kill")
    }
    /// `restart`: starts the killed server again on the same address.
    fn restart(&self) {
        missing("restart")
    }
    /// `pause`: SIGSTOP; its sockets stay, nothing answers.
    fn pause(&self) {
        missing("pause")
    }
    fn resume(&self) {
        missing("resume")
    }
    /// `reset`: the port of its one TCP address on 127.0.0.1, which its URL names.
    fn port(&self) -> u16 {
        missing("port")
    }
    /// `durable`: the stored expiry of `name` under the test's prefix, in µs
    /// by the server's clock.
    fn expires_us(&self, _ctx: &Ctx, _name: &str) -> i64 {
        missing("expires_us")
    }
    /// `sessions`: ends every session of dlock's user; how many it ended.
    fn end_sessions(&self) -> usize {
        missing("end_sessions")
    }
    /// `sessions`: the session holding `name`'s wake-up lock, if any.
    fn wake_holder(&self, _ctx: &Ctx, _name: &str) -> Option<String> {
        missing("wake_holder")
    }
}

fn missing(hook: &str) -> ! {
    panic!("this harness has no {hook} hook: its row in tests/common/backends.rs claims a capability it lacks")
}

/// A server of the test's own, with its fault hooks, and the test's `Ctx`
/// on it (which it derefs to).
pub struct Rig {
    pub server: Arc<dyn Faults>,
    pub ctx: Ctx,
}

impl Rig {
    pub fn new<S: Faults + 'static>(server: S) -> Rig {
        let server = Arc::new(server);
        Rig {
            ctx: Ctx::new(server.clone()),
            server,
        }
    }
}

impl Deref for Rig {
    type Target = Ctx;
    fn deref(&self) -> &Ctx {
        &self.ctx
    }
}
