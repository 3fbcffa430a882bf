//! How each scheme's URLs are written, for `dlock urls` and messages. They
//! live here, apart from the backends, so that a build without a backend
//! (see the cargo features) still lists its form and names its feature.

pub const SQLITE: &str = "sqlite:///path/to/locks.db";
pub const REDIS: &str = "redis://[user:pass@]host[:port][/db]";
pub const REDISS: &str = "rediss://[user:pass@]host[:port][/db]";
pub const REDIS_UNIX: &str = "redis+unix:///path/to/redis.sock[?db=N&user=…&pass=…]";
pub const SENTINEL: &str =
    "redis+sentinel://[user:pass@]host:26379,host:26379,…/SERVICE[/db][?wait_replicas=N]";
pub const CLUSTER: &str = "redis+cluster://[user:pass@]host:port,host:port,…[?wait_replicas=N]";
pub const REDLOCK: &str = "redlock://[user:pass@]host:6379,host:6379,host:6379[/db] (an odd number of servers, at least 3)";
pub const MYSQL: &str = "mysql://user:pass@host[:port]/database[?require_ssl=true]";
pub const POSTGRES: &str =
    "postgres://user:pass@host[:port][,host[:port]…]/database[?sslmode=…&schema=…]";
pub const POSTGRESQL: &str = "postgresql://… (as postgres://)";
pub const ETCD: &str = "etcd://[user:pass@]host[:port][,host[:port]…]";
pub const ETCDS: &str = "etcds://…[?cacert=/path/ca.pem][&cert=…&key=…]";
pub const ZOOKEEPER: &str = "zk://[user:pass@]host1[:port],host2[:port]…[/chroot]";
