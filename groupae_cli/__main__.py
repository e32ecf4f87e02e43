from groupae_cli.early_worker import console_main

console_main()
