//! End-to-end tests: one binary, one module per area.

mod analytics;
mod auth;
mod backup;
mod bad_clients;
mod bad_network;
mod cluster;
mod crash;
mod deploy;
mod durability;
mod full_disk;
mod hostile;
mod hostile_fleet;
mod ingest;
mod layers;
mod metrics_format;
mod offline;
mod overload;
mod passivation;
mod path_mtu;
mod power_loss;
mod process;
mod reload;
mod resends;
mod restart;
mod storm;
mod top;
