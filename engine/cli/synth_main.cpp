// placeholder until ds4-synth lands (replaced in this session)
int main() { return 0; }
