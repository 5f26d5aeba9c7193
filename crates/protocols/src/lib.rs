//! Wire formats spoken by Switchboard: encode and decode only, no I/O.
