//! The userspace mode (kube-proxy's original proxy, SEEDS.md B): per service port a socket the
//! proxy accepts on and a second connection to a backend. Its pieces land one by one; it is not
//! selectable with `--proxy-mode` yet (M2 5/11).
//!
//! - [`lb`]: the round robin with ClientIP affinity that picks a backend per connection.

pub mod lb;
