//! Joining a cluster: the token format (`token`), its storage in etcd, the
//! join API and its client.

pub mod token;
