
echo "built $PWD/$OUT; next: husk plugin install ./$OUT"
