from groupae_cli.app import main

main()
