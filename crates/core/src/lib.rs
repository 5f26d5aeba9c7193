//! Switchboard channel core: hub, channels, fan-out, limits. Pure logic, no sockets.
