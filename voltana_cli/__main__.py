from voltana_cli.cli import main

main()
