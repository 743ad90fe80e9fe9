//! Unit tests of the devices role's handler on in-memory records: no broker needed.

use super::*;
