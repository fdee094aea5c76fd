//! Network-namespace lab for ha-agent.
