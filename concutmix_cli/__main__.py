from concutmix_cli.cli import main

main()
