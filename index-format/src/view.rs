//! Not yet implemented: the replay of a transaction log onto an index.
