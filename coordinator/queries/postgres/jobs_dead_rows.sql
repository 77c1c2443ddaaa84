SELECT n_dead_tup, n_live_tup, n_mod_since_analyze FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass
