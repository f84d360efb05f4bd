//! End-to-end tests: one binary, one module per area.

mod bad_clients;
mod bad_network;
mod durability;
mod ingest;
mod layers;
mod offline;
mod storm;
