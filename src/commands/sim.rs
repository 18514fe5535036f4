//! `redswitch sim`: run the FreeSWITCH simulator.
