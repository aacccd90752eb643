echo "hello from a keelson container"
echo "hostname: $(hostname)"
echo "pid in its namespace: $$"
echo "user: $(id)"
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
echo "root is mounted: $(awk '$5 == "/" {print $6}' /proc/self/mountinfo)"
