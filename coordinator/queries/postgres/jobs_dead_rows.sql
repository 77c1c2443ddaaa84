SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass
