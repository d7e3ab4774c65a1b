//! Test support for homing: starts private, isolated real Dovecot 2.3 instances and runs
//! `doveadm` against them. Not yet implemented.
