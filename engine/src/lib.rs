//! The sync brain. Not yet implemented.
